"""Templates → the exact config files of each host.

One renderer: the roles only place these files, validate them with the daemons and reload.
The output is deterministic (same site, same bytes) so it can be diffed, golden-tested and
checked before a deploy. Decisions live in context.py, so templates read like the files they
produce.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from mailstack.files import write_atomic
from mailstack.host import acme, backup_tool, fts_decoder, sealer, storage_tool
from mailstack.render.context import WEB, build_context, host_vars
from mailstack.resources import resource_dir
from mailstack.site.config import SiteConfig
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost, select_hosts

HOST_VARS_FILE = "mailstack_vars.yml"
STORAGE_TOOL_FILE = PurePosixPath(storage_tool.PATH.lstrip("/"))
SEALER_FILE = PurePosixPath(sealer.PATH.lstrip("/"))
ACME_TOOL_FILE = PurePosixPath(acme.PATH.lstrip("/"))
BACKUP_TOOL_FILE = PurePosixPath(backup_tool.PATH.lstrip("/"))
FTS_DECODER_FILE = PurePosixPath(fts_decoder.PATH.lstrip("/"))
# The sealer's units exist only with an encrypted store.
SEALER_PREFIXES = ("etc/systemd/system/mailstack-seal",)

# Files that carry a password, a hash or a private key: 0600 wherever mailstack writes them.
SECRET_FILES = {
    "etc/postfix/mysql/virtual_mailboxes.cf",
    "etc/postfix/mysql/virtual_aliases.cf",
    "etc/postfix/mysql/sender_login.cf",
    "etc/postfix/mysql/quota_mailboxes.cf",
    "etc/postfix/sasl_passwd",
    "etc/dovecot/dovecot-sql.conf.ext",
    "etc/mailstack/db-users.sql",
    "etc/mailstack/accounts.sql",
    "etc/mailstack/tls/privkey.pem",
    "etc/mailstack/backup/passphrase",
    "etc/mailstack/backup/id_ed25519",
    "etc/sogo/sogo.conf",
    "etc/mysql/mailstack-groupware-db.sql",
}


@dataclass(frozen=True)
class RenderedFile:
    path: PurePosixPath  # relative to the host's root, e.g. etc/postfix/main.cf
    content: str
    secret: bool

    @property
    def mode(self) -> int:
        return 0o600 if self.secret else 0o644


def sql_literal(value: Any) -> str:
    """A MariaDB string literal (NO_BACKSLASH_ESCAPES off, the default)."""
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''").replace("\0", "\\0") + "'"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["sql"] = sql_literal
    return env



def _host_vars_file(context: dict[str, Any]) -> RenderedFile:
    header = (f"# {context['managed_header']}\n"
              "# Facts of this host that the roles share with the rendered files; site.yml "
              "loads them.\n")
    body = yaml.safe_dump(host_vars(context), sort_keys=True, default_flow_style=False)
    return RenderedFile(PurePosixPath(HOST_VARS_FILE), header + body, False)


# Files that exist only with the virus scanner (options.antivirus): clamd's settings, its
# units' drop-ins, rspamd's antivirus module.
ANTIVIRUS_PREFIXES = ("etc/clamav/", "etc/systemd/system/clamav-daemon.")
# Files that exist only with ACME certificates (options.tls.certificate: acme), and the
# certificate itself only when it comes from the vault (files).
ACME_PREFIXES = ("etc/mailstack/acme.json", "etc/systemd/system/mailstack-acme.")
IMPORTED_CERTIFICATE = "etc/mailstack/tls/fullchain.pem"
# Files that exist only with options.monitoring.prometheus: the exporter's settings, the
# metrics service and its timer.
MONITORING_PREFIXES = ("etc/default/prometheus-node-exporter", "etc/systemd/system/mailstack-metrics.")
# Files that exist only with backups (options.backup).
BACKUP_PREFIXES = ("etc/mailstack/backup", "etc/systemd/system/mailstack-backup")
# Files that exist only with the groupware (options.groupware): SOGo's, its cache's and its
# database server's.
GROUPWARE_PREFIXES = ("etc/sogo/", "etc/default/sogo", "etc/memcached.conf",
                      "etc/mysql/mailstack-groupware-db.",
                      "etc/systemd/system/mailstack-groupware-db.",
                      f"{WEB['root'].lstrip('/')}/{WEB['mobilesync_document']}")


def _wanted(target: str, context: dict[str, Any]) -> bool:
    """Whether a template's file belongs to this host: some exist only with an option."""
    if target == "etc/postfix/sasl_passwd":
        return context["mail"]["relay"] is not None
    if target.startswith(ACME_PREFIXES):
        return context["tls"]["acme"]["enabled"]
    if target == IMPORTED_CERTIFICATE:
        return context["tls"]["chain"] is not None
    if target.startswith(MONITORING_PREFIXES):
        return context["monitoring"]["prometheus"]
    if target.startswith(BACKUP_PREFIXES):
        return context["backup"]["enabled"]
    if target.startswith(GROUPWARE_PREFIXES):
        return context["groupware"]["enabled"]
    if target.startswith(SEALER_PREFIXES):
        return context["storage"]["sealing"]["enabled"]
    if target.startswith(ANTIVIRUS_PREFIXES) or f"/{target}" in context["antivirus"]["rspamd_files"]:
        return context["antivirus"]["enabled"]
    return True


def render_host(cfg: SiteConfig, secrets: Any, host: InventoryHost) -> list[RenderedFile]:
    context = build_context(cfg, secrets, host)
    env = environment()
    files = [_host_vars_file(context),
             RenderedFile(STORAGE_TOOL_FILE, Path(storage_tool.__file__).read_text(), False),
             RenderedFile(FTS_DECODER_FILE, Path(fts_decoder.__file__).read_text(), False)]
    if context["storage"]["sealing"]["enabled"]:
        files.append(RenderedFile(SEALER_FILE, Path(sealer.__file__).read_text(), False))
    if context["tls"]["acme"]["enabled"]:
        files.append(RenderedFile(ACME_TOOL_FILE, Path(acme.__file__).read_text(), False))
    if context["backup"]["enabled"]:
        files.append(RenderedFile(BACKUP_TOOL_FILE, Path(backup_tool.__file__).read_text(), False))
    for name in sorted(env.list_templates(filter_func=lambda n: n.endswith(".j2"))):
        target = PurePosixPath(name.removesuffix(".j2"))
        if not _wanted(str(target), context):
            continue
        content = env.get_template(name).render(context)
        files.append(RenderedFile(target, content, str(target) in SECRET_FILES))
    for key in context["dkim"]["signing_keys"]:
        pem = secrets.dkim[key["domain"]]["private_key"]
        files.append(RenderedFile(PurePosixPath(key["key_file"].lstrip("/")), pem, True))
    return files


def render_site(site: Site, only_host: str | None = None) -> dict[str, list[RenderedFile]]:
    """Rendered files per inventory host. Nothing is generated here: a secret missing from
    the vault is an error that says how to restore it (secrets.py)."""
    cfg = site.config
    hosts = select_hosts(site.root, site.inventory, only_host)
    return {h.name: render_host(cfg, site.secrets, h) for h in hosts}


def write_tree(files: list[RenderedFile], out: Path) -> None:
    """Replace ``out`` with exactly these files (no stale leftovers), secrets 0600."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for f in files:
            write_atomic(staging / f.path, f.content, mode=f.mode)
        staging.chmod(0o700)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
