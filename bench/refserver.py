"""Reference server for the benchmarks: WsgiDAV's FilesystemProvider on a plain directory.

Usage: ``python bench/refserver.py --root DIR --listen 127.0.0.1:PORT``

It serves ``DIR`` at ``/`` the way davcoll is served, so that the two can be
compared request for request:

* the same cheroot server: it is built by ``davcoll.server.make_server``
  itself (worker threads, socket timeout, listen backlog, keep-alive limit
  and header cap are therefore identical by construction), with the thread
  count and timeout of davcoll's default configuration;
* the same WsgiDAV knobs that matter for speed: ``block_size`` 1 MiB, the
  in-memory lock manager on, no property manager, ``verbose`` 1, request
  logging off.  The directory browser is off (davcoll's only answers GET on
  folders, which no benchmark does).
* anonymous read-write access (``simple_dc`` with ``"*": True``), as davcoll
  gets with ``--anonymous write``.

It prints one line ``ready http://HOST:PORT/`` once listening and stops
cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsgidav.fs_dav_provider import FilesystemProvider  # noqa: E402
from wsgidav.wsgidav_app import WsgiDAVApp  # noqa: E402

from davcoll.config import Config  # noqa: E402
from davcoll.server import BLOCK_SIZE, make_server  # noqa: E402


def build_reference_app(root: str, property_manager: str = "none") -> WsgiDAVApp:
    config = {
        "provider_mapping": {"/": FilesystemProvider(root, readonly=False, fs_opts={})},
        "simple_dc": {"user_mapping": {"*": True}},
        "http_authenticator": {"domain_controller": None},
        "lock_storage": True,
        # "memory": WsgiDAV's in-memory PropertyManager (scenario 11 sets dead
        # properties; without a manager the reference refuses PROPPATCH).
        "property_manager": True if property_manager == "memory" else None,
        "block_size": BLOCK_SIZE,
        "verbose": 1,
        "logging": {"enable": False},
        "dir_browser": {"enable": False},
    }
    app = WsgiDAVApp(config)
    logging.getLogger("wsgidav").setLevel(logging.WARNING)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="directory to serve")
    p.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT")
    p.add_argument("--property-manager", choices=("none", "memory"), default="none",
                   help="dead properties: none (refused) or WsgiDAV's in-memory manager")
    args = p.parse_args(argv)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    host, _, port = args.listen.rpartition(":")
    defaults = Config()
    # make_server only reads .wsgi and the TLS settings of .config.
    shim = SimpleNamespace(wsgi=build_reference_app(args.root, args.property_manager), config=defaults)
    server = make_server(shim, host, int(port), threads=defaults.threads, timeout=defaults.timeout)
    server.prepare()
    bound = server.bind_addr
    print(f"ready http://{bound[0]}:{bound[1]}/", flush=True)

    def _stop(signum, frame):  # noqa: ARG001
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
