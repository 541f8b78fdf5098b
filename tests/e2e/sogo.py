"""A client of SOGo's web side for the tests and benchmarks: HTTPS to a test host (its
self-signed certificate accepted), cookies kept, the JSON calls SOGo's own pages make; and
SOGo's pages in a real browser (Pages, driven by selenium: tests/e2e/browser.py)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from .helpers import tls_context


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Web:
    """HTTPS to the host (its self-signed certificate accepted), with the host name as Host
    and the cookies SOGo sets kept."""

    ip: str
    host: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
                timeout: float = 60) -> Response:
        conn = http.client.HTTPSConnection(self.ip, 443, context=tls_context(), timeout=timeout)
        all_headers = {"Host": self.host, **(headers or {})}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        for value in resp.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(value).items():
                self.cookies[name] = morsel.value
        return Response(resp.status, resp.headers, data)

    def put_new(self, path: str, text: str, content_type: str,
                auth: tuple[str, str]) -> Response:
        """A new DAV resource (an event, a contact), as clients create one: it must not
        exist yet (If-None-Match: *)."""
        put = self.request("PUT", path, text.encode(),
                           {"Content-Type": f"{content_type}; charset=utf-8",
                            "If-None-Match": "*"}, auth=auth)
        assert put.status in (201, 204), (put.status, put.body[:500])
        return put

    def login(self, user: str, password: str) -> Response:
        return self.request("POST", "/SOGo/connect",
                            json.dumps({"userName": user, "password": password,
                                        "rememberLogin": 0}).encode(),
                            {"Content-Type": "application/json"})

    def inbox(self, user: str) -> Response:
        """The INBOX's message list, as SOGo's mail view asks for it (XSRF token echoed)."""
        return self.request(
            "POST", f"/SOGo/so/{user}/Mail/0/folderINBOX/view",
            json.dumps({"sortingAttributes": {"sort": "arrival", "asc": 0}}).encode(),
            {"Content-Type": "application/json",
             "X-XSRF-TOKEN": self.cookies.get("XSRF-TOKEN", "")})


# An event as a calendar app PUTs it (CalDAV), on 24 December 2026.
EVENT = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//mailstack//tests//EN\r
BEGIN:VEVENT\r
UID:{uid}\r
DTSTAMP:20260101T090000Z\r
DTSTART:20261224T180000Z\r
DTEND:20261224T200000Z\r
SUMMARY:{summary}\r
END:VEVENT\r
END:VCALENDAR\r
"""


def subjects_of(listing: dict) -> list[str]:
    """The Subject column of SOGo's prefetched headers (the first row names the columns)."""
    headers = listing.get("headers") or []
    if not headers:
        return []
    column = headers[0].index("Subject")
    return [row[column] for row in headers[1:]]




@dataclass
class Pages:
    """SOGo 5's web pages (AngularJS Material) used as a person uses them: typing, clicking,
    reading what is shown. The selectors are those of SOGo's own templates (MainUI/
    SOGoRootPage.wox, MailerUI/UIxMailFolderTemplate.wox, UIxMailViewTemplate.wox,
    UIxMailEditor.wox); every step waits for what it needs, up to `timeout` seconds."""

    driver: WebDriver
    timeout: float = 60

    @property
    def wait(self) -> WebDriverWait:
        return WebDriverWait(self.driver, self.timeout)

    def visible(self, css: str) -> WebElement:
        return self.wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def log_in(self, url: str, user: str, password: str) -> None:
        """The login page at url: user name, password, the connect button."""
        self.driver.get(url)
        self.visible("form[name=loginForm] input[ng-model='app.creds.username']").send_keys(user)
        self.visible("form[name=loginForm] input#passwordField").send_keys(password)
        self.wait.until(ec.element_to_be_clickable(
            (By.CSS_SELECTOR, "form[name=loginForm] button[type=submit]"))).click()

    def open_message(self, subject: str) -> str:
        """Click the message in the mail view's list (the INBOX, shown after a login); the
        text of its body as the viewer shows it."""
        assert "'" not in subject, subject  # an XPath 1.0 literal below
        tile = self.wait.until(ec.visibility_of_element_located((
            By.XPATH, "//md-list-item[contains(@class, 'sg-message-list-item')]"
                      f"//*[contains(@class, 'sg-tile-subject')][normalize-space()='{subject}']")))
        # A mouse click where the subject shows: the list item's action is a button that
        # Angular Material lays over the item's text.
        ActionChains(self.driver).move_to_element(tile).click().perform()
        self.wait.until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "h5.sg-md-headline"), subject))
        return self.wait.until(lambda _: self.visible(".msg-body .mailer_mailcontent").text)

    def _editor_body(self) -> WebElement:
        """The body of the editor's current document (the driver left inside its frame)."""
        self.driver.switch_to.default_content()
        self.driver.switch_to.frame(self.visible("md-dialog iframe.cke_wysiwyg_frame"))
        return self.visible("body[contenteditable=true]")

    def reply(self, to: str, text: str, quoted: str) -> None:
        """The open message's Reply (to the sender only), addressed to `to` instead of the
        sender, `text` typed into the editor once it shows `quoted` (the quoted message),
        then Send; returns once the editor has closed (sent)."""
        self.wait.until(lambda d: next((b for b in d.find_elements(
            By.CSS_SELECTOR, "button[aria-label='Reply']") if b.is_displayed() and b.is_enabled()),
            False)).click()
        dialog = self.visible("md-dialog")
        recipients = "md-dialog md-chips[ng-model='editor.message.editable.to']"
        self.visible(f"{recipients} md-chip")  # the sender, filled in
        # A click while the dialog still opens (its animation) can be lost: click the
        # remove buttons again until no chip is left, as a person would.
        def removed(d: WebDriver) -> bool:
            for remove in d.find_elements(By.CSS_SELECTOR,
                                          f"{recipients} md-chip button.md-chip-remove"):
                with contextlib.suppress(WebDriverException):  # gone, or not clickable yet
                    remove.click()
            return not d.find_elements(By.CSS_SELECTOR, f"{recipients} md-chip")
        self.wait.until(removed)
        self.visible(f"{recipients} input").send_keys(to, Keys.TAB)
        self.wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{recipients} md-chip"),
                                                         to))
        # The HTML editor (CKEditor, SOGo's default) edits a document in an iframe, and SOGo
        # fills it with the quoted message after the dialog opens, which loads a new
        # document into the frame: keys sent before that are lost, or go to the recipients'
        # input and become a second "recipient" (both seen under load). So, as a person
        # does, wait until the quoted message shows, then type into the body shown then.
        try:
            self.wait.until(lambda _: quoted in self._editor_body().text)
            body = self._editor_body()
            self.driver.execute_script("arguments[0].focus()", body)
            body.send_keys(text)
            self.wait.until(lambda _: text in self._editor_body().text)
        finally:  # a failure's screenshot and page are of the whole page, not the frame
            self.driver.switch_to.default_content()
        chips = self.driver.find_elements(By.CSS_SELECTOR, f"{recipients} md-chip")
        assert len(chips) == 1, [chip.text for chip in chips]
        self.wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//md-dialog//button[.//md-icon[normalize-space()='send']]"))).click()
        self.wait.until(ec.staleness_of(dialog))
