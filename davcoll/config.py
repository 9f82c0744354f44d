"""Configuration: defaults, an optional TOML file, then command-line flags.

Secrets (Arvados tokens) come from the config file or environment
variables, never only from the command line (where `ps` would show them).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import tomllib
import types
from dataclasses import Field, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like '256MiB', '1.5GB', '4096'."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r}")
    unit = (m.group(2) or "").upper().rstrip("B")
    return int(float(m.group(1)) * _UNITS[unit])


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400, "w": 7 * 86400, "week": 7 * 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '14d', '336h', '2 weeks', '90s'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION_RE.fullmatch(str(value))
    unit = m.group(2).lower() if m else ""
    if unit.endswith("s") and unit[:-1] in _SECONDS:
        unit = unit[:-1]
    if not m or unit not in _SECONDS:
        raise ValueError(f"invalid duration {value!r}")
    return float(m.group(1)) * _SECONDS[unit]


def _listen_problem(value: str) -> str | None:
    """Why ``value`` is not a usable HOST:PORT, or None."""
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return "must be HOST:PORT"
    if int(port) > 65535:
        return f"port {port} is out of range (1-65535; 0 = any free port)"
    return None


def _shared_state_problem(value: str) -> str | None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        return "must be a redis://, rediss:// or unix:// URL (or empty)"
    return None


class ConfigError(ValueError):
    """A bad setting.  The message names the setting (and the file), fit for
    one line on stderr: start-up errors must say what to fix, not where in
    davcoll they were noticed."""


@dataclass
class Config:
    backend: str = field(default="embedded", metadata={"choices": ("embedded", "arvados")})
    data_dir: str = "./davcoll-data"
    listen: str = field(default="127.0.0.1:8080", metadata={"check": _listen_problem})
    anonymous: str = field(default="auto", metadata={"choices": ("auto", "none", "read", "write")})
    # Worker threads kept ready; the pool grows past this under load, up to max_threads.
    threads: int = field(default=64, metadata={"min": 1})
    # Seconds a request body or a response may make no progress (idle, not total).
    timeout: int = field(default=300, metadata={"gt": 0})
    # A request line + headers must arrive within this many seconds (from the
    # connection, or from the first byte of a later request on a keep-alive
    # connection): silent and slow-header clients are cut off here.  Never
    # longer than `timeout`.  Waiting for a head costs no worker thread.
    header_timeout: float = field(default=15.0, metadata={"unit": "seconds", "gt": 0})
    # Seconds a keep-alive connection may wait for its next request (no worker).
    idle_timeout: float = field(default=60.0, metadata={"unit": "seconds", "gt": 0})
    max_threads: int = field(default=1024, metadata={"min": 1})  # requests in flight at once
    # Open connections in total (also kept below the open-file limit) and per
    # client address.  At a cap a new connection is still accepted: the oldest
    # connection waiting for a request (from that address) is closed instead.
    max_connections: int = field(default=8192, metadata={"min": 1})
    max_connections_per_address: int = field(default=4096, metadata={"min": 1})
    block_cache: int = field(default=256 << 20, metadata={"unit": "bytes", "min": 0})
    buffer_limit: int = field(default=256 << 20, metadata={"unit": "bytes", "min": 1})
    tree_cache: int = field(default=512 << 20, metadata={"unit": "bytes", "min": 0})
    # Retention of the embedded backend, applied by `davcoll gc`: a trashed
    # collection is purged trash_lifetime after it was trashed (Arvados'
    # DefaultTrashLifetime, 2 weeks); an old version once it has not been the
    # current one for version_lifetime, except the newest versions_kept.
    trash_lifetime: float = field(default=14 * 86400.0, metadata={"unit": "seconds", "min": 0})
    version_lifetime: float = field(default=14 * 86400.0, metadata={"unit": "seconds", "min": 0})
    versions_kept: int = field(default=1, metadata={"min": 1})
    revalidate_seconds: float = field(default=2.0, metadata={"min": 0})
    # PROPFIND Depth: infinity (or no Depth) on a folder is answered, streamed,
    # when the subtree has at most this many entries; 0 refuses it everywhere.
    propfind_infinity_max_entries: int = field(default=10_000, metadata={"min": 0})
    # Per collection: creating a path more than max_depth components deep is
    # refused (409); growing past max_entries files+folders or an (estimated)
    # manifest of max_manifest_bytes answers 507.  Existing data stays readable.
    max_depth: int = field(default=256, metadata={"min": 1})
    max_entries: int = field(default=10_000_000, metadata={"min": 1})
    max_manifest_bytes: int = field(default=1 << 30, metadata={"unit": "bytes", "min": 1})
    # Serve HTML/SVG/XML/JS files inline (same origin as every user's data);
    # default: as attachments, like keep-web without TrustAllContent.
    inline_active_content: bool = False
    junk_patterns: list[str] = field(default_factory=lambda: ["._*", ".DS_Store", "Thumbs.db", "desktop.ini", ".localized"])
    junk_max_bytes: int = field(default=64 << 20, metadata={"unit": "bytes", "min": 0})
    # Dead properties (PROPPATCH): per resource, and bytes of one value's XML;
    # past either the PROPPATCH gets 507 with the reason and changes nothing.
    max_dead_props: int = field(default=1000, metadata={"min": 1})
    max_prop_bytes: int = field(default=64 << 10, metadata={"unit": "bytes", "min": 1})
    # Finder/Windows metadata files kept in memory at most (besides junk_max_bytes,
    # which counts names and a per-file overhead too).
    junk_max_entries: int = field(default=100_000, metadata={"min": 1})
    tls_cert: str = ""
    tls_key: str = ""
    arvados_api_host: str = ""
    arvados_insecure: bool = False
    arvados_anonymous_token: str = field(default="", repr=False)
    log_level: str = field(default="INFO", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")})
    # Locks and dead properties shared by every instance ("redis://host:port/db");
    # empty: locks in the data directory, Arvados dead properties per instance.
    shared_state: str = field(default="", repr=False, metadata={"check": _shared_state_problem})
    max_lock_timeout: float = field(default=3600.0, metadata={"unit": "seconds", "gt": 0})  # "Timeout: Infinite" gets this
    max_lock_owner_bytes: int = field(default=4096, metadata={"unit": "bytes", "min": 0})
    max_locks_per_principal: int = field(default=1000, metadata={"min": 1})

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


# TOML sections flatten into field names: [server] listen -> listen, etc.  A
# section outside this list is an error (a misspelled [sever] must not be
# silently applied).
SECTIONS = ("server", "storage", "webdav", "arvados", "locks")
_ALIASES = {
    ("arvados", "api_host"): "arvados_api_host",
    ("arvados", "insecure"): "arvados_insecure",
    ("arvados", "anonymous_token"): "arvados_anonymous_token",
}


def load_config(path: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file, then the environment, then ``overrides``
    (command-line flags; None = not given).  Every value is checked against
    its field's type and metadata as it is set: ConfigError names the key."""
    cfg = Config()
    if path:
        for label, key, value in _read_toml(path):
            _set(cfg, key, value, label)
    if os.environ.get("DAVCOLL_DATA_DIR") and overrides.get("data_dir") is None:
        cfg.data_dir = os.environ["DAVCOLL_DATA_DIR"]
    env_token = os.environ.get("ARVADOS_ANONYMOUS_TOKEN")
    if env_token and not cfg.arvados_anonymous_token:
        cfg.arvados_anonymous_token = env_token
    if not cfg.arvados_api_host and os.environ.get("ARVADOS_API_HOST") and overrides.get("backend") == "arvados":
        cfg.arvados_api_host = os.environ["ARVADOS_API_HOST"]
    for key, value in overrides.items():
        if value is not None:
            _set(cfg, key, value, key)
    if cfg.arvados_api_host and cfg.backend == "embedded" and overrides.get("arvados_api_host"):
        cfg.backend = "arvados"
    _validate(cfg)
    return cfg


def _read_toml(path: str) -> list[tuple[str, str, Any]]:
    """(label for errors, field name, value) for every setting in the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    out: list[tuple[str, str, Any]] = []
    for section, values in data.items():
        if not isinstance(values, dict):
            out.append((f"{path}: {section}", section, values))
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]{_hint(section, SECTIONS)}"
                              f" (known: {', '.join(SECTIONS)})")
        for key, value in values.items():
            out.append((f"{path}: [{section}] {key}", _ALIASES.get((section, key), key), value))
    return out


@functools.cache
def _specs() -> dict[str, tuple[Field, Any]]:
    """Each field with its resolved type (annotations are strings here)."""
    hints = get_type_hints(Config)
    return {f.name: (f, hints[f.name]) for f in fields(Config)}


def _hint(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set(cfg: Config, key: str, value: Any, label: str) -> None:
    if key in _REPLACED:
        raise ConfigError(f"{label}: replaced by {_REPLACED[key]}")
    spec = _specs().get(key)
    if spec is None:
        raise ConfigError(f"{label}: unknown setting{_hint(key, _specs())}")
    setattr(cfg, key, check_value(spec[0], spec[1], value, label))


def check_value(f: Field, typ: Any, value: Any, label: str) -> Any:
    """``value`` as field ``f`` (annotated ``typ``) stores it, or ConfigError.

    Generic over the dataclass so that every field -- including ones added
    later -- is checked: TOML's "no" is a string, and a string is truthy, so
    an unchecked bool setting would be silently turned on.  Metadata adds
    units ("bytes", "seconds": strings like 256MiB, 14d), choices, ranges
    (min, max, gt) and a "check" function returning a problem or None.
    Secret fields (repr=False) never echo their value.
    """
    meta = f.metadata
    shown = f"{label} = {value!r}" if f.repr else label
    unit = meta.get("unit")
    if isinstance(value, str) and unit in ("bytes", "seconds"):
        try:
            value = parse_size(value) if unit == "bytes" else parse_duration(value)
        except ValueError:
            example = "a size such as 4096, 256MiB or 1GB" if unit == "bytes" else "a duration such as 90s, 12h, 14d or 2w"
            raise ConfigError(f"{shown}: must be {example}") from None
    ok, value = _conform(typ, value)
    if not ok:
        raise ConfigError(f"{shown}: must be {_describe(typ)}")
    problem = meta["check"](value) if "check" in meta else None
    if problem:
        raise ConfigError(f"{shown}: {problem}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{shown}: must be one of {', '.join(map(str, meta['choices']))}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{shown}: must be at least {meta['min']}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(f"{shown}: must be greater than {meta['gt']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{shown}: must be at most {meta['max']}")
    return value


def _conform(typ: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` is a ``typ``; the value converted where lossless
    (int to float, path to str, tuple to list)."""
    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        for arg in get_args(typ):
            ok, conformed = _conform(arg, value)
            if ok:
                return True, conformed
        return False, value
    if typ is Any:
        return True, value
    if typ is type(None):
        return value is None, value
    if typ is bool:
        return isinstance(value, bool), value
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if typ is str:
        if isinstance(value, os.PathLike):
            return True, os.fspath(value)
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item,) = get_args(typ) or (Any,)
        out = []
        for v in value:
            ok, v = _conform(item, v)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if isinstance(typ, type):
        return isinstance(value, typ), value
    return True, value


def _describe(typ: Any) -> str:
    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(typ))
    if origin is list:
        (item,) = get_args(typ) or (Any,)
        return f"a list of {_describe(item).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "true or false (unquoted)", int: "an integer", float: "a number", str: "a string",
             type(None): "absent"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


# Keys that were replaced: a config file still naming one gets told which.
_REPLACED = {
    "propfind_infinity": "propfind_infinity_max_entries (folders up to that many entries answer "
                         "Depth: infinity; 0 refuses it)",
}


def _validate(cfg: Config) -> None:
    """Checks across fields (each field's own type and range were checked as it was set)."""
    if cfg.backend == "arvados" and not cfg.arvados_api_host:
        raise ValueError("the arvados backend needs arvados_api_host (or --arvados-api-host)")
    if not cfg.data_dir:
        raise ConfigError("data_dir: must not be empty")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("tls_cert and tls_key: set both (PEM files) or neither")
