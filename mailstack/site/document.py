"""``mailstack.yml`` on disk: read and written in ruamel's round-trip form, so that edits by
``mailstack user add …`` keep the user's comments and layout, and validated (config.py) on
load and before every write."""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent

from mailstack.errors import ConfigError, MailstackError
from mailstack.site.config import SiteConfig, validate


def yaml_rt() -> YAML:
    yaml = YAML()  # round-trip: keeps comments, order and layout
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    # Keep `relay: null` readable instead of ruamel's bare `relay:`.
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


class ConfigDocument:
    """``mailstack.yml`` as the user wrote it (comments included) plus its validated model."""

    def __init__(self, path: Path, data: CommentedMap) -> None:
        self.path = path
        self.data = data
        self.model: SiteConfig = validate(data, path)

    @classmethod
    def load(cls, path: Path) -> ConfigDocument:
        return cls(path, load_yaml(path))

    def revalidate(self) -> None:
        """Validate the edited document before it is written; a refused change raises
        MailstackError (exit 1) naming every rule it would break, and writes nothing."""
        try:
            self.model = validate(self.data, self.path, with_lines=False)
        except ConfigError as exc:
            raise MailstackError("refused: the change would break the site:",
                                 details=exc.details) from None

    def dumps(self) -> str:
        stream = io.StringIO()
        yaml_rt().dump(self.data, stream)
        return stream.getvalue()


MAX_SIZE = 1024 * 1024  # a site's mailstack.yml is a few KB; anything near this is a mistake


def option_to_map(options: CommentedMap, key: str, value: CommentedMap) -> None:
    """Put a map where `key: null` was. The comment block that followed `key: null` belongs
    to the next option; ruamel keeps it on the replaced value, so it moves to the new map's
    last key."""
    trailing = options.ca.items.pop(key, None)
    options[key] = value
    if trailing and trailing[2] is not None:
        value.ca.items[list(value)[-1]] = [None, None, trailing[2], None]


def set_option_fields(options: CommentedMap, key: str, fields: dict[str, object]) -> None:
    """Set fields of the map at options[key]: in place when there is one (its other keys,
    e.g. a relay's spf_include, kept), else a new map where `key: null` was."""
    current = options.get(key)
    if isinstance(current, CommentedMap):
        current.update(fields)
    else:
        option_to_map(options, key, CommentedMap(fields))


def option_to_null(options: CommentedMap, key: str) -> None:
    """Set `key: null` where a map was, the comment block after the map's last key kept
    after the null (the reverse of option_to_map)."""
    old = options[key]
    trailing = getattr(old, "ca", None) and old.ca.items.get(list(old)[-1])
    options[key] = None
    if trailing and trailing[2] is not None:
        options.ca.items[key] = [None, None, trailing[2], None]


def load_yaml(path: Path) -> CommentedMap:
    text = read_text(path, what="the site's desired state", fix=(
        "run mailstack inside a site directory, pass --site DIR, or create a site with "
        "`mailstack init DIR`"))
    refuse_aliases(text, path)
    try:
        data = yaml_rt().load(text)
    except MarkedYAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML ({_where(exc)}): {exc.problem}; fix "
                          "the syntax there") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"{path.name} must be a mapping of keys (hostname:, domains:, …)")
    return data


def read_text(path: Path, *, what: str, fix: str) -> str:
    """A site file as text, or one message for each way it can be unreadable."""
    try:
        if path.is_dir():
            raise ConfigError(f"{path} is a directory, not a file ({what}); {fix}")
        if path.stat().st_size > MAX_SIZE:
            raise ConfigError(f"{path} is larger than {MAX_SIZE // 1024} KB; it cannot be "
                              f"{what}")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {fix}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (line {line}, byte {exc.start}); save it "
                          "as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def refuse_aliases(text: str, path: Path) -> None:
    """Refuse YAML anchors and aliases (&a, *a) before anything is built from the text: a few
    nested aliases expand exponentially (a 2 KB "billion laughs" never finished loading), and
    a site file has no use for them."""
    try:
        for event in YAML(typ="safe").parse(text):
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ConfigError(f"{path.name} line {line}: YAML anchors and aliases (&name, "
                                  "*name) are not accepted here; write the values out")
    except MarkedYAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML ({_where(exc)}): {exc.problem}; fix "
                          "the syntax there") from None


def _where(exc: MarkedYAMLError) -> str:
    mark = exc.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
    if exc.context_mark and mark and exc.context_mark.line != mark.line:
        where += f"; {exc.context} on line {exc.context_mark.line + 1}"
    return where
