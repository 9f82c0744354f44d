"""The davcoll command: start-up errors, config validation, token data dirs.

Issue 13 §3: start-up problems came out as tracebacks (or not at all: a
misspelled section was ignored, ``timeout = -5`` started a server that
dropped every connection).  Issue 15 item 5: ``propfind_infinity = "no"``
turned the setting on.  Each case must end with one line on stderr naming the
setting or path, and a non-zero exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest

from davcoll.cli import main
from davcoll.config import Config, ConfigError, load_config, parse_duration


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("DAVCOLL_DATA_DIR", "ARVADOS_API_HOST", "ARVADOS_ANONYMOUS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "davcoll.toml"
    path.write_text(text)
    return str(path)


def _serve_fails(capsys, *args: str) -> str:
    """Run ``davcoll serve ARGS``; it must fail with one stderr line."""
    code = main(["serve", *args])
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert err.startswith("davcoll: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- config values ------------------------------------------------------------


def test_a_quoted_boolean_is_an_error_not_true(tmp_path):
    """Before: any non-empty string (TOML "no") switched a bool setting on."""
    with pytest.raises(ConfigError, match=r"\[arvados\] insecure = 'no': must be true or false"):
        load_config(_toml(tmp_path, '[arvados]\ninsecure = "no"\n'))


def _wrong_value(typ):
    """A value of the wrong type for a field annotated ``typ``."""
    if typ is bool:
        return "no"
    if typ in (int, float):
        return "many"
    if typ is str:
        return 5
    if get_origin(typ) is list:
        return [1, 2]
    return object()


@pytest.mark.parametrize("f", fields(Config), ids=lambda f: f.name)
def test_every_field_is_type_checked(f):
    """Generic: a field added later is checked without further code."""
    typ = get_type_hints(Config)[f.name]
    with pytest.raises(ConfigError) as exc:
        load_config(None, **{f.name: _wrong_value(typ)})
    assert f.name in str(exc.value)
    if not f.repr:  # secrets are never echoed
        assert "5" not in str(exc.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[server]\nthreads = "many"\n', "[server] threads = 'many': must be an integer"),
        ("[server]\nthreads = 0\n", "threads = 0: must be at least 1"),
        ("[server]\ntimeout = -5\n", "[server] timeout = -5: must be greater than 0"),
        ('[server]\nlisten = "127.0.0.1:99999"\n', "port 99999 is out of range"),
        ('[server]\nlisten = "localhost"\n', "must be HOST:PORT"),
        ('[sever]\nlisten = "127.0.0.1:1"\n', "unknown section [sever] (did you mean 'server'?)"),
        ('[server]\nlisen = "127.0.0.1:1"\n', "[server] lisen: unknown setting (did you mean 'listen'?)"),
        ('[storage]\nblock_cache = "lots"\n', "block_cache = 'lots': must be a size"),
        ('[storage]\ntrash_lifetime = "soon"\n', "trash_lifetime = 'soon': must be a duration"),
        ('[storage]\nbackend = "s3"\n', "backend = 's3': must be one of embedded, arvados"),
        ("[webdav]\njunk_patterns = [1]\n", "junk_patterns = [1]: must be a list of strings"),
        ('[arvados]\nanonymous_token = 5\n', "[arvados] anonymous_token: must be a string"),
        ('[server]\ntls_cert = "c.pem"\n', "tls_cert and tls_key: set both"),
        ("threads = [\n", "config file"),
    ],
)
def test_bad_config_is_named(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(_toml(tmp_path, text))
    assert fragment in str(exc.value)


def test_good_values_convert(tmp_path):
    cfg = load_config(_toml(tmp_path, (
        '[server]\nlisten = "127.0.0.1:0"\n'
        '[storage]\nblock_cache = "1MiB"\ntrash_lifetime = "2w"\nversion_lifetime = "36h"\n'
        "[webdav]\nrevalidate_seconds = 3\n"
    )))
    assert cfg.block_cache == 1 << 20 and cfg.trash_lifetime == 14 * 86400 and cfg.version_lifetime == 36 * 3600
    assert cfg.revalidate_seconds == 3.0 and isinstance(cfg.revalidate_seconds, float)
    assert load_config(None, data_dir=tmp_path / "d").data_dir == str(tmp_path / "d")  # a Path is fine
    assert [parse_duration(x) for x in ("90", "90s", "2 days", "1.5h")] == [90, 90, 172800, 5400]


def test_sample_configs_load():
    repo = Path(__file__).resolve().parents[1]
    load_config(str(repo / "config" / "embedded.toml"))
    cfg = load_config(str(repo / "config" / "arvados.toml"))
    assert cfg.backend == "arvados"


# -- start-up errors ------------------------------------------------------------


def test_port_in_use(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = _serve_fails(capsys, "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    assert f"listen = 127.0.0.1:{port}" in err and "in use" in err


def test_port_out_of_range(tmp_path, capsys):
    err = _serve_fails(capsys, "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:99999")
    assert "listen" in err and "99999" in err


def test_data_dir_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = _serve_fails(capsys, "--data-dir", str(tmp_path / "afile"), "--listen", "127.0.0.1:0")
    assert f"data_dir {tmp_path / 'afile'}: exists and is not a directory" in err


def test_data_dir_cannot_be_created(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = _serve_fails(capsys, "--data-dir", str(tmp_path / "afile" / "sub"), "--listen", "127.0.0.1:0")
    assert f"data_dir {tmp_path / 'afile' / 'sub'}: cannot be created" in err


def _runnable_by_nobody(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"], user=65534,
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_data_dir_read_only(tmp_path):
    """Run as an unprivileged user (root may write anywhere)."""
    base = Path(tempfile.mkdtemp(prefix="davcoll-ro-"))
    try:
        data = base / "data"
        data.mkdir()
        os.chmod(base, 0o755)
        os.chmod(data, 0o555)
        kwargs = {}
        python = sys.executable
        if os.geteuid() == 0:
            kwargs["user"] = 65534  # nobody
            # The check runs before anything outside the standard library is
            # imported, so a system Python the user can run will do.
            python = next((p for p in (sys.executable, "/usr/bin/python3") if _runnable_by_nobody(p)), None)
            if python is None:
                pytest.skip("no Python the unprivileged user can run")
        elif os.access(data, os.W_OK):
            pytest.skip("cannot make a directory read-only here")
        env = {k: v for k, v in os.environ.items() if k != "DAVCOLL_DATA_DIR"}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        proc = subprocess.run(
            [python, "-m", "davcoll.cli", "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60, cwd=base, env=env, **kwargs,
        )
        assert proc.returncode != 0
        assert proc.stderr.strip() == f"davcoll: data_dir {data}: not writable (Permission denied)", proc.stderr
    finally:
        os.chmod(base / "data", 0o755)
        for p in sorted(base.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        base.rmdir()


def test_missing_tls_file(tmp_path, capsys):
    cfg = _toml(tmp_path, '[server]\ntls_cert = "nope.pem"\ntls_key = "nope.key"\n')
    err = _serve_fails(capsys, "--config", cfg, "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0")
    assert f"tls_cert {tmp_path / 'nope.pem'}: No such file or directory" in err


def test_tls_file_not_a_certificate(tmp_path, capsys):
    (tmp_path / "c.pem").write_text("not a cert")
    (tmp_path / "k.pem").write_text("not a key")
    cfg = _toml(tmp_path, '[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    err = _serve_fails(capsys, "--config", cfg, "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0")
    assert "tls_cert c.pem / tls_key k.pem: not a PEM certificate" in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[server]\nthreads = "many"\n', "threads = 'many'"),
        ("[server]\ntimeout = -5\n", "timeout = -5"),
        ('[sever]\nlisten = "127.0.0.1:0"\n', "unknown section [sever]"),
    ],
)
def test_bad_config_file_stops_serve(tmp_path, capsys, text, fragment):
    err = _serve_fails(capsys, "--config", _toml(tmp_path, text), "--data-dir", str(tmp_path / "d"))
    assert fragment in err


def test_missing_config_file(tmp_path, capsys):
    err = _serve_fails(capsys, "--config", str(tmp_path / "none.toml"))
    assert f"config file {tmp_path / 'none.toml'}: No such file or directory" in err


# -- token data dirs --------------------------------------------------------------


def test_token_data_dir_before_or_after_the_subcommand(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["token", "create", "--data-dir", str(data), "--label", "one"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and f"created new data dir {data}" in out.err
    assert main(["token", "--data-dir", str(data), "create", "--label", "two"]) == 0
    assert f"using data dir {data}" in capsys.readouterr().err
    assert main(["token", "list", "--data-dir", str(data)]) == 0
    listed = capsys.readouterr().out
    assert "one" in listed and "two" in listed
    assert not (tmp_path / "davcoll-data").exists()


def test_token_list_never_creates_a_data_dir(tmp_path, capsys):
    """Before: `token list` in another directory made a new ./davcoll-data."""
    assert main(["token", "list"]) == 1
    err = capsys.readouterr().err
    assert f"data_dir {tmp_path / 'davcoll-data'}: does not exist" in err and "--data-dir" in err
    assert not (tmp_path / "davcoll-data").exists()
    (tmp_path / "empty").mkdir()
    assert main(["token", "revoke", "abcd", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "no catalog here" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


def test_token_refused_for_arvados_backend(tmp_path, capsys):
    cfg = _toml(tmp_path, '[storage]\nbackend = "arvados"\n[arvados]\napi_host = "https://x.example"\n')
    assert main(["token", "--config", cfg, "list"]) == 2
    assert "embedded backend" in capsys.readouterr().err
