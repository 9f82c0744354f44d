"""Printing the target table shared by the micro-benchmarks (bench_*.py)."""

from __future__ import annotations

Row = tuple  # (measure, value text, target text, passed: bool | None)


def print_targets(rows: list[Row]) -> int:
    """Print ``rows`` as an aligned table; return the exit code (1 if a
    target was missed)."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':<{w0}}  {'value':>{w1}}  target")
    print(f"{'-' * w0}  {'-' * w1}  ------")
    ok = True
    for name, val, target, passed in rows:
        mark = "" if passed is None else ("  ok" if passed else "  MISSED")
        ok = ok and passed is not False
        print(f"{name:<{w0}}  {val:>{w1}}  {target}{mark}")
    return 0 if ok else 1
