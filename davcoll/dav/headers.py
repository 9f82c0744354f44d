"""Strict grammars for request headers WsgiDAV parses leniently.

WsgiDAV reads ``bytes=5-2`` as a suffix range and ignores an ``If`` header it
cannot parse (so a conditional write goes ahead unconditionally).  These
checks let the guard answer such requests the way the RFCs say.
"""

from __future__ import annotations

import re

_RANGE_SPEC = re.compile(r"\s*(?:(\d+)-(\d*)|-(\d+))\s*")


def classify_range(value: str) -> str:
    """How to treat a Range header (RFC 9110 14.1-14.2).

    Returns ``"ok"`` (one valid byte range), ``"multi"`` (several valid
    ranges), ``"ignore"`` (another unit: the header must be ignored and the
    whole representation sent) or ``"unsatisfiable"`` (only ``-0``, or a
    ``bytes=`` set that is not valid syntax, e.g. ``5-2`` or ``z-y``: RFC
    9110 14.2 lets a server ignore or reject those; we reject with 416 as
    keep-web does, so a broken client notices).
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return "ignore"
    parts = spec.split(",")
    count = 0
    zero_suffix = True
    for part in parts:
        if not part.strip():
            continue  # RFC list syntax allows empty elements
        m = _RANGE_SPEC.fullmatch(part)
        if m is None:
            return "unsatisfiable"
        first, last, suffix = m.groups()
        if suffix is not None:
            if int(suffix) != 0:
                zero_suffix = False
        else:
            zero_suffix = False
            if last and int(last) < int(first):
                return "unsatisfiable"
        count += 1
    if count == 0:
        return "unsatisfiable"
    if zero_suffix:
        return "unsatisfiable"
    # Any list form (even "1-2,") goes the multi-range way: WsgiDAV's own
    # parser only handles a single plain range.
    return "multi" if count > 1 or "," in spec else "ok"


def valid_if_header(value: str) -> bool:
    """Whether an ``If`` header follows RFC 4918 10.4.

    ``If = 1*No-tag-list | 1*Tagged-list``; a list is ``( 1*Condition )``, a
    condition ``["Not"] (State-token | "[" entity-tag "]")``, a state token
    ``<absolute-URI>`` and a resource tag ``<Simple-ref>``.
    """
    s = value
    n = len(s)
    i = 0
    tagged: bool | None = None
    lists = 0
    need_list = False

    def ws(j: int) -> int:
        while j < n and s[j] in " \t":
            j += 1
        return j

    while True:
        i = ws(i)
        if i >= n:
            break
        c = s[i]
        if c == "<":
            if tagged is False or need_list:
                return False
            end = s.find(">", i + 1)
            if end <= i + 1 or " " in s[i + 1 : end]:
                return False
            tagged, need_list = True, True
            i = end + 1
        elif c == "(":
            if tagged is None:
                tagged = False
            i += 1
            conditions = 0
            while True:
                i = ws(i)
                if i >= n:
                    return False
                if s[i] == ")":
                    i += 1
                    break
                if s.startswith("Not", i):
                    i = ws(i + 3)
                    if i >= n or s[i] not in "<[":
                        return False
                if s[i] == "<":
                    end = s.find(">", i + 1)
                    if end <= i + 1 or " " in s[i + 1 : end]:
                        return False
                elif s[i] == "[":
                    end = s.find("]", i + 1)
                    tag = s[i + 1 : end].strip() if end > 0 else ""
                    if end < 0 or not re.fullmatch(r'(W/)?"[^"]*"', tag):
                        return False
                else:
                    return False
                i = end + 1
                conditions += 1
            if conditions == 0:
                return False
            lists += 1
            need_list = False
        else:
            return False
    return lists > 0 and not need_list
