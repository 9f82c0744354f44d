"""Keep permission signatures (``+A`` hints), spec section 4.

A signature binds a block's md5 to one API token until an expiry time::

    message   = md5hex "@" token "@" expiry_hex8 "@" ttl_hex
    signature = hex(HMAC-SHA1(blob_signing_key, message))

Only the 32-hex digest is signed (not the size or other hints), the token is
the exact string the client presents (a whole ``v2/uuid/secret`` for v2
tokens), and the cluster TTL is part of the message, so changing the TTL
invalidates every outstanding signature.

Real clusters sign on the server side; davcoll itself never knows a signing
key.  The signing half of this module exists for the fake cluster and the
embedded backend, which must produce byte-identical hints so that the code
paths that carry, refresh and strip signatures are exercised offline.  The
inspection helpers (expiry, stripping) are what the client side uses.

Pure: no I/O, and secrets (key, token) never appear in exception messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Callable, Iterator

__all__ = [
    "DEFAULT_TTL",
    "SignatureError",
    "MissingSignature",
    "ExpiredSignature",
    "InvalidSignature",
    "compute_signature",
    "sign_locator",
    "verify_locator",
    "is_valid_signature",
    "permission_hint",
    "signature_expiry",
    "strip_permission",
    "sign_manifest",
    "strip_manifest_signatures",
    "manifest_locators",
    "earliest_expiry",
    "needs_refresh",
    "map_manifest_locators",
    "is_empty_block",
]

DEFAULT_TTL = 14 * 24 * 3600  # Collections.BlobSigningTTL default: 2 weeks (0x127500 s)

_EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
# One +A hint anywhere after the size (verifiers accept any position).
_A_HINT = re.compile(r"\+A([0-9a-f]{40})@([0-9a-f]{8})(?=\+|$)")
# Any hint starting with A (also malformed ones), for stripping.
_ANY_A_HINT = re.compile(r"\+A[-A-Za-z0-9@_]*")
_LOCATOR = re.compile(r"[0-9a-f]{32}\+[0-9]+(?:\+[A-Z][-A-Za-z0-9@_]*)*")
# A locator token inside a manifest: preceded by a space (never the first
# token of a line, which is the stream name) and followed by space/newline.
# File tokens cannot match: they start with ``digits:``.
_MANIFEST_LOCATOR = re.compile(r"(?<= )([0-9a-f]{32})\+([0-9]+)((?:\+[A-Z][-A-Za-z0-9@_]*)*)(?=[ \n])")


class SignatureError(ValueError):
    """A locator's permission signature does not authorize the request."""


class MissingSignature(SignatureError):
    """No ``+A`` hint (or no token to check it against)."""


class ExpiredSignature(SignatureError):
    """The ``+A`` hint is well formed but its expiry has passed."""


class InvalidSignature(SignatureError):
    """The ``+A`` hint does not match this md5/token/expiry/TTL."""


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def compute_signature(key: str | bytes, md5hex: str, token: str, expiry: int, ttl: int = DEFAULT_TTL) -> str:
    """The 40-hex HMAC-SHA1 of spec 4.2 for one digest/token/expiry/TTL."""
    message = f"{md5hex}@{token}@{expiry:08x}@{ttl:x}"
    return hmac.new(_key_bytes(key), message.encode("utf-8"), hashlib.sha1).hexdigest()


def is_empty_block(locator: str) -> bool:
    """The empty block needs no signature anywhere (spec 4.4)."""
    return locator.startswith(_EMPTY_MD5 + "+")


def permission_hint(locator: str) -> tuple[str, int] | None:
    """``(signature, expiry)`` of the locator's first ``+A`` hint, if any."""
    m = _A_HINT.search(locator, 33)
    if m is None:
        return None
    return m.group(1), int(m.group(2), 16)


def signature_expiry(locator: str) -> int | None:
    """Unix expiry time of the locator's ``+A`` hint, or None if unsigned."""
    hint = permission_hint(locator)
    return None if hint is None else hint[1]


def needs_refresh(locator: str, ttl: float, now: float | None = None) -> bool:
    """Whether a signed locator is past half its life (and not yet expired).

    A signature is issued at ``expiry - ttl``; davcoll re-signs once half of
    the TTL has gone by, so what it hands on stays valid for at least
    ``ttl/2`` more.  Unsigned or already expired locators: False (nothing
    to refresh, or too late to refresh through Keep).
    """
    expiry = signature_expiry(locator)
    if expiry is None:
        return False
    now = time.time() if now is None else now
    return now < expiry and now - (expiry - ttl) > ttl / 2


def map_manifest_locators(manifest_text: str, fn: Callable[[str], str]) -> str:
    """The manifest with every locator token replaced by ``fn(locator)``
    (called once per distinct locator)."""
    seen: dict[str, str] = {}

    def repl(m: re.Match[str]) -> str:
        loc = m.group(0)
        out = seen.get(loc)
        if out is None:
            out = seen[loc] = fn(loc)
        return out

    return _MANIFEST_LOCATOR.sub(repl, manifest_text)


def strip_permission(locator: str) -> str:
    """The locator without any ``+A`` hint; other hints are kept in order."""
    if "+A" not in locator:
        return locator
    return locator[:33] + _ANY_A_HINT.sub("", locator[33:])


def sign_locator(
    locator: str,
    key: str | bytes,
    token: str,
    *,
    expiry: int | None = None,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """The locator with its ``+A`` hint replaced by a fresh one for ``token``.

    ``expiry`` defaults to now + TTL.  Signers append the hint after every
    other hint, which is also where the Go and Rails signers put it.
    """
    if _LOCATOR.fullmatch(locator) is None:
        raise ValueError("not a block locator with a size hint")
    if expiry is None:
        expiry = int(now if now is not None else time.time()) + ttl
    sig = compute_signature(key, locator[:32], token, expiry, ttl)
    return f"{strip_permission(locator)}+A{sig}@{expiry:08x}"


def verify_locator(
    locator: str,
    key: str | bytes,
    token: str | None,
    *,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> None:
    """Raise a SignatureError subclass unless the locator is validly signed.

    The empty block always passes.  A locator may carry several ``+A``
    hints (a careless client may append a second); any one valid hint is
    enough, as with a verifier that scans every hint.
    """
    if is_empty_block(locator):
        return
    if not token:
        raise MissingSignature("no token to check the signature against")
    hints = list(_A_HINT.finditer(locator, 33))
    if not hints:
        raise MissingSignature("locator carries no permission signature")
    t = now if now is not None else time.time()
    expired = False
    for m in hints:
        expiry = int(m.group(2), 16)
        expected = compute_signature(key, locator[:32], token, expiry, ttl)
        if hmac.compare_digest(expected, m.group(1)):
            if expiry < t:
                expired = True
                continue
            return
    if expired:
        raise ExpiredSignature("permission signature has expired")
    raise InvalidSignature("permission signature does not match")


def is_valid_signature(locator: str, key: str | bytes, token: str | None, *, ttl: int = DEFAULT_TTL, now: float | None = None) -> bool:
    try:
        verify_locator(locator, key, token, ttl=ttl, now=now)
    except SignatureError:
        return False
    return True


def manifest_locators(manifest_text: str) -> Iterator[str]:
    """Every locator token of a manifest, in text order (duplicates kept)."""
    for m in _MANIFEST_LOCATOR.finditer(manifest_text):
        yield m.group(0)


def sign_manifest(
    manifest_text: str,
    key: str | bytes,
    token: str,
    *,
    expiry: int | None = None,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """Sign every locator of a manifest for ``token`` (old ``+A`` replaced).

    The empty block is signed too, as the controller does; it is harmless.
    All locators get the same expiry, so one HMAC per distinct digest.
    """
    if expiry is None:
        expiry = int(now if now is not None else time.time()) + ttl
    cache: dict[str, str] = {}
    kb = _key_bytes(key)

    def repl(m: re.Match[str]) -> str:
        md5hex = m.group(1)
        sig = cache.get(md5hex)
        if sig is None:
            sig = cache[md5hex] = compute_signature(kb, md5hex, token, expiry, ttl)
        hints = m.group(3)
        if "+A" in hints:
            hints = _ANY_A_HINT.sub("", hints)
        return f"{md5hex}+{m.group(2)}{hints}+A{sig}@{expiry:08x}"

    return _MANIFEST_LOCATOR.sub(repl, manifest_text)


def strip_manifest_signatures(manifest_text: str) -> str:
    """The manifest with every ``+A`` hint removed (other hints stay).

    This is what the API server stores (spec 4.4); unlike a PDH-style strip
    it keeps ``+K``/``+R``/unknown hints.
    """
    if "+A" not in manifest_text:
        return manifest_text

    def repl(m: re.Match[str]) -> str:
        hints = m.group(3)
        if "+A" in hints:
            hints = _ANY_A_HINT.sub("", hints)
        return f"{m.group(1)}+{m.group(2)}{hints}"

    return _MANIFEST_LOCATOR.sub(repl, manifest_text)


def earliest_expiry(manifest_text: str) -> int | None:
    """The soonest ``+A`` expiry in a manifest (None when nothing is signed).

    Unsigned locators are ignored: a caller caching a manifest until its
    earliest expiry only cares about signatures that will run out.
    """
    earliest: int | None = None
    for m in _MANIFEST_LOCATOR.finditer(manifest_text):
        hints = m.group(3)
        if "+A" not in hints:
            continue
        a = _A_HINT.search(hints)
        if a is None:
            continue
        exp = int(a.group(2), 16)
        if earliest is None or exp < earliest:
            earliest = exp
    return earliest
