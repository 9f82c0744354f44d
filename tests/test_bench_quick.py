"""The benchmark command still works (``bench/run.py --quick --only 3``).

This runs one fast scenario end to end -- davcoll and the WsgiDAV reference
as child processes, the shared client, the table -- and checks the output
has the table's shape.  It makes no timing assertions: the benchmark is
not part of the test suite, only kept from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_prints_a_table(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "3", "--repeat", "1",
         "--workdir", str(tmp_path / "work"), "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| #"))
    for col in ("workload", "davcoll", "reference", "ratio", "target", "verdict"):
        assert col in lines[header]
    body = [ln for ln in lines[header + 2:] if ln.startswith("| ")]
    assert any(ln.startswith("| 3 ") for ln in body), proc.stdout
    row3 = next(ln for ln in body if ln.startswith("| 3 "))
    cells = [c.strip() for c in row3.strip("|").split("|")]
    assert float(cells[3]) > 0 and float(cells[5]) > 0  # davcoll and reference medians
    assert cells[-1] in ("pass", "MISS")
    data = json.loads(out_json.read_text())
    assert [r["scenario"] for r in data["rows"]] == ["0a", "0b", "0c", "3"]
    assert not data["failures"]
