"""Slow and idle connections (issue 11 §1): does a fresh request still get an answer?

Usage: ``python bench/bench_slowloris.py [--silent 1000 --slow 1000 --stalled 200]``

For each server, all from 127.0.0.1 (the address the probe also uses):

* ``silent``: connect and send nothing;
* ``slow``: a request head trickled one byte per second, never finished;
* ``stalled``: a PUT announcing 10 MB whose body stops after 10 bytes;

then, with all of them open, ``--probes`` fresh connections each GET a small
resource and the time to the status line is printed (``timeout`` past
``--probe-timeout`` seconds).  Then it counts the attack connections the
server still holds, and reports the server's RSS and thread count.

Servers, one after the other in one run:

* davcoll (``davcoll serve``, default configuration, embedded backend);
* WsgiDAV's FilesystemProvider on stock cheroot (64 threads, 300 s socket
  timeout, backlog 128: davcoll's server settings before issue 11, and the
  cheroot shape WsgiDAV itself uses) — bench/refserver.py's app, but not its
  server, which is davcoll's make_server.

The attack window is shorter than davcoll's ``header_timeout`` (15 s), so
what is measured is the server holding every attack connection at once,
not cutting them off.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import ServerProc, davcoll_server, free_port, proc_status_kib  # noqa: E402

STOCK_REFERENCE = r"""
import resource, sys
sys.path.insert(0, sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
import cheroot.wsgi
from pathlib import Path
from refserver import build_reference_app
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
server = cheroot.wsgi.Server(("127.0.0.1", int(sys.argv[2])), build_reference_app(sys.argv[1]),
                             numthreads=64, timeout=300, request_queue_size=128, shutdown_timeout=2)
import signal, threading
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.stop, daemon=True).start())
server.prepare()
server.serve()
"""


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stock_reference(root: Path, log_dir: Path) -> ServerProc:
    port = free_port()
    here = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-c", STOCK_REFERENCE, str(root), str(port), here]
    return ServerProc("wsgidav-stock-cheroot", cmd, port, log_dir / f"stock-{port}.log")


def request(port: int, raw: bytes, timeout: float) -> tuple[int | None, float]:
    """Send ``raw`` on a fresh connection: (status, seconds to the status line)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(raw)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return None, time.monotonic() - t0
                buf += chunk
            return int(buf.split(b" ", 2)[1]), time.monotonic() - t0
    except OSError:
        return None, time.monotonic() - t0


def still_open(s: socket.socket) -> bool:
    """Has the server not closed this connection?"""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def attack_args(silent: int = 1000, slow: int = 1000, stalled: int = 200, probes: int = 5,
                probe_timeout: float = 5.0) -> argparse.Namespace:
    """The attack's parameters as ``run_attack`` takes them (for bench/run.py)."""
    return argparse.Namespace(silent=silent, slow=slow, stalled=stalled, probes=probes, probe_timeout=probe_timeout)


def run_attack(name: str, srv: ServerProc, args: argparse.Namespace, prefix: str) -> dict:
    """Open the attack connections against ``srv``, time ``args.probes`` fresh
    GETs while they are open, count what the server still holds; the dict's
    ``latencies_ms`` has one entry per probe (None: no 200 within the timeout)."""
    port = srv.port
    request(port, f"MKCOL {prefix}c/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(), 10)
    request(port, f"PUT {prefix}c/probe.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                  "Connection: close\r\n\r\nok".encode(), 10)
    probe = f"GET {prefix}c/probe.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    base_status, base_latency = request(port, probe, args.probe_timeout)
    rss0 = proc_status_kib(srv.pid, "VmRSS")
    groups: dict[str, list[socket.socket]] = {"silent": [], "slow": [], "stalled": []}
    failed = 0
    t_open = time.monotonic()
    try:
        for kind, n in (("silent", args.silent), ("slow", args.slow), ("stalled", args.stalled)):
            for i in range(n):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    if kind == "slow":
                        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    elif kind == "stalled":
                        s.sendall(f"PUT {prefix}c/stalled-{i}.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Length: 10000000\r\n\r\n0123456789".encode())
                    groups[kind].append(s)
                except OSError:
                    failed += 1
        opened_in = time.monotonic() - t_open
        latencies: list[float | None] = []
        for _ in range(args.probes):
            for s in groups["slow"]:
                with contextlib.suppress(OSError):
                    s.send(b"a")
            status, elapsed = request(port, probe, args.probe_timeout)
            latencies.append(elapsed if status == 200 else None)
            time.sleep(max(0.0, 1.0 - elapsed))
        held = {k: sum(still_open(s) for s in v) for k, v in groups.items()}
        rss1 = proc_status_kib(srv.pid, "VmRSS")
        threads = proc_status_kib(srv.pid, "Threads")
    finally:
        for v in groups.values():
            for s in v:
                s.close()
    ok = [x for x in latencies if x is not None]
    return {
        "server": name,
        "baseline_ms": base_latency * 1000 if base_status == 200 else None,
        "answered": f"{len(ok)}/{len(latencies)}",
        "median_ms": statistics.median(ok) * 1000 if ok else None,
        "max_ms": max(ok) * 1000 if ok and len(ok) == len(latencies) else None,
        "latencies_ms": [None if x is None else x * 1000 for x in latencies],
        "held": held,
        "connect_failures": failed,
        "opened_in_s": opened_in,
        "rss_growth_mib": (rss1 - rss0) / 1024,
        "threads": threads,
    }


def fmt_ms(v: float | None, timeout: float) -> str:
    return f"{v:.0f} ms" if v is not None else f"timeout (>{timeout:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--silent", type=int, default=1000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--stalled", type=int, default=200)
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--probe-timeout", type=float, default=5.0)
    p.add_argument("--only", choices=["davcoll", "stock"], help="run one server only")
    args = p.parse_args(argv)
    raise_fd_limit()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-slowloris-") as tmp:
        tmpp = Path(tmp)
        servers = []
        if args.only in (None, "davcoll"):
            servers.append(("davcoll", lambda: davcoll_server(tmpp / "davcoll", tmpp / "logs"), "/"))
        if args.only in (None, "stock"):
            servers.append(("WsgiDAV FilesystemProvider, stock cheroot",
                            lambda: stock_reference(tmpp / "ref", tmpp / "logs"), "/"))
        for name, factory, prefix in servers:
            with factory() as srv:
                rows.append(run_attack(name, srv, args, prefix))
    print(f"attack from 127.0.0.1: {args.silent} silent + {args.slow} slow-header + {args.stalled} stalled-body "
          f"connections; {args.probes} fresh GETs from the same address while they are open")
    for r in rows:
        held = r["held"]
        print(f"- {r['server']}: fresh GET answered {r['answered']}, median {fmt_ms(r['median_ms'], args.probe_timeout)}, "
              f"max {fmt_ms(r['max_ms'], args.probe_timeout)} (unloaded {fmt_ms(r['baseline_ms'], args.probe_timeout)}); "
              f"held {held['silent']}/{held['slow']}/{held['stalled']} silent/slow/stalled "
              f"({r['connect_failures']} connects failed, opened in {r['opened_in_s']:.1f} s); "
              f"RSS +{r['rss_growth_mib']:.0f} MiB, {r['threads']} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
