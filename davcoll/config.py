"""Configuration: defaults, an optional TOML file, then command-line flags.

Secrets (Arvados tokens) come from the config file or environment
variables, never only from the command line (where `ps` would show them).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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


@dataclass
class Config:
    backend: str = "embedded"  # embedded | arvados
    data_dir: str = "./davcoll-data"
    listen: str = "127.0.0.1:8080"
    anonymous: str = "auto"  # auto | none | read | write
    threads: int = 64
    timeout: int = 300
    block_cache: int = 256 << 20
    buffer_limit: int = 256 << 20
    tree_cache: int = 512 << 20
    revalidate_seconds: float = 2.0
    propfind_infinity: bool = False
    junk_patterns: list[str] = field(default_factory=lambda: ["._*", ".DS_Store", "Thumbs.db", "desktop.ini", ".localized"])
    junk_max_bytes: int = 64 << 20
    tls_cert: str = ""
    tls_key: str = ""
    arvados_api_host: str = ""
    arvados_insecure: bool = False
    arvados_anonymous_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    # Locks and dead properties shared by every instance ("redis://host:port/db");
    # empty: locks in the data directory, Arvados dead properties per instance.
    shared_state: str = field(default="", repr=False)
    max_lock_timeout: float = 3600.0  # seconds; "Timeout: Infinite" gets this
    max_lock_owner_bytes: int = 4096
    max_locks_per_principal: int = 1000

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


_SIZE_FIELDS = {"block_cache", "buffer_limit", "tree_cache", "junk_max_bytes"}
# TOML sections flatten into field names: [server] listen -> listen, etc.
_ALIASES = {
    ("arvados", "api_host"): "arvados_api_host",
    ("arvados", "insecure"): "arvados_insecure",
    ("arvados", "anonymous_token"): "arvados_anonymous_token",
}


def load_config(path: str | None = None, **overrides: Any) -> Config:
    cfg = Config()
    names = {f.name for f in fields(Config)}
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        for section, values in data.items():
            if not isinstance(values, dict):
                _set(cfg, section, values, names)
                continue
            for key, value in values.items():
                _set(cfg, _ALIASES.get((section, key), key), value, names)
    if os.environ.get("DAVCOLL_DATA_DIR") and overrides.get("data_dir") is None:
        cfg.data_dir = os.environ["DAVCOLL_DATA_DIR"]
    env_token = os.environ.get("ARVADOS_ANONYMOUS_TOKEN")
    if env_token and not cfg.arvados_anonymous_token:
        cfg.arvados_anonymous_token = env_token
    if not cfg.arvados_api_host and os.environ.get("ARVADOS_API_HOST") and overrides.get("backend") == "arvados":
        cfg.arvados_api_host = os.environ["ARVADOS_API_HOST"]
    for key, value in overrides.items():
        if value is not None:
            _set(cfg, key, value, names)
    if cfg.arvados_api_host and cfg.backend == "embedded" and overrides.get("arvados_api_host"):
        cfg.backend = "arvados"
    _validate(cfg)
    return cfg


def _set(cfg: Config, key: str, value: Any, names: set[str]) -> None:
    if key not in names:
        raise ValueError(f"unknown configuration key {key!r}")
    if key in _SIZE_FIELDS:
        value = parse_size(value)
    setattr(cfg, key, value)


def _validate(cfg: Config) -> None:
    if cfg.backend not in ("embedded", "arvados"):
        raise ValueError("backend must be 'embedded' or 'arvados'")
    if cfg.anonymous not in ("auto", "none", "read", "write"):
        raise ValueError("anonymous must be auto, none, read or write")
    if cfg.backend == "arvados" and not cfg.arvados_api_host:
        raise ValueError("the arvados backend needs arvados_api_host (or --arvados-api-host)")
    if ":" not in cfg.listen:
        raise ValueError("listen must be HOST:PORT")
    cfg.port  # raises on a bad port
    Path(cfg.data_dir)
