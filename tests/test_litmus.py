"""litmus (the WebDAV conformance suite) against a real ``davcoll serve``.

All five suites run against a collection URL; every test must pass and
litmus must print no warnings.  Skipped only when the litmus binary is not
installed (CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import requests

from server_util import ServerProcess

LITMUS = shutil.which("litmus")
SUITES = ("basic", "copymove", "props", "locks", "http")
EXPECTED = {"basic": 16, "copymove": 13, "props": 30, "locks": 41, "http": 4}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LITMUS is None, reason="litmus is not installed")]

_SUMMARY = re.compile(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed")


def test_litmus_all_suites(tmp_path):
    work = tmp_path / "litmus"
    work.mkdir()
    with ServerProcess(tmp_path / "data", args=["--anonymous", "write"]) as srv:
        r = requests.request("MKCOL", srv.url + "litmus-coll/", timeout=10)
        assert r.status_code == 201, r.text
        env = {**os.environ, "TESTS": " ".join(SUITES)}
        proc = subprocess.run(
            [LITMUS, srv.url + "litmus-coll/"],
            cwd=work,  # litmus writes debug.log and child.log here
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        out = proc.stdout + proc.stderr
        # The server survived the whole run and still answers.
        assert requests.get(srv.url + "_health", timeout=10).status_code == 200
        log = srv.log_text()

    summaries = {m.group(1): tuple(int(x) for x in m.group(2, 3, 4)) for m in _SUMMARY.finditer(out)}
    assert set(summaries) == set(SUITES), out[-3000:]
    for suite, (run, passed, failed) in summaries.items():
        assert (run, passed, failed) == (EXPECTED[suite], EXPECTED[suite], 0), f"{suite}: {run=} {passed=} {failed=}\n{out[-3000:]}"
    assert sum(p for _, p, _ in summaries.values()) == 104
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert warnings == [], "\n".join(warnings)
    assert proc.returncode == 0, out[-3000:]
    # No request crashed the server side.
    assert "Traceback" not in log, log[-3000:]
    assert " 500 " not in log
