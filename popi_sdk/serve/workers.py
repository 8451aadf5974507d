"""``popi serve --workers N``: several server processes on one listening socket.

One proxy process relays on one core. Past that, the parent binds the address once and forks
``N`` workers that each build their own app (their own store connection, upstream clients and,
for a local generator, model) and accept from the shared socket, as gunicorn and uvicorn's own
``--workers`` do. Nothing is shared between workers but the socket and the store: the SQLite store
is in WAL mode with ``BEGIN IMMEDIATE`` writes and reconnects after a fork (one connection per
process), and PostgreSQL is a server. So a summary one worker writes is what every worker reads.

The app is built in each worker, after the fork, from a factory: nothing heavy (torch, an open
connection, an event loop) crosses the fork. The first worker starts alone, so a bad store or
generator fails once, with its own message, before the others start. When a worker exits the
parent stops the rest and exits with its status: a supervisor (systemd, Kubernetes, SkyPilot's
readiness probe) then restarts the whole server, rather than the server running short-handed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from popi_sdk.errors import InputError, PopiError

#: Seconds the first worker gets to build its app (a local generator loads its model first).
STARTUP_TIMEOUT = 600.0


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker accepts from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e}. Pick another --port or stop what "
                         "holds it.") from e
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _worker(factory: Callable[[], Any], sock: socket.socket, ready: Any, index: int,
            options: dict[str, Any]) -> None:
    import uvicorn

    for s in (signal.SIGINT, signal.SIGTERM):  # the parent's handlers came along with the fork
        signal.signal(s, signal.SIG_DFL)
    try:
        app = factory()
    except PopiError as e:
        print(f"Error (worker {index}): {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    config = uvicorn.Config(app, timeout_keep_alive=30, **options)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        ready.set()  # accepting now: the parent may start the next worker

    server.startup = startup
    server.run(sockets=[sock])


def serve_workers(factory: Callable[[], Any], *, workers: int, host: str = "127.0.0.1",
                  port: int = 8080, log_level: str = "info", access_log: bool = True) -> int:
    """Serve the app ``factory()`` builds from ``workers`` processes sharing ``host:port``, until
    interrupted or a worker exits; returns the exit status (0 after SIGINT/SIGTERM).

    ``factory`` runs in each worker after the fork (a closure is fine: nothing is pickled).
    Needs ``fork`` (Linux, macOS)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise InputError("--workers above 1 needs a system with fork (Linux, macOS); run one "
                         "`popi serve` per port behind a load balancer instead.")
    ctx = multiprocessing.get_context("fork")
    sock = bind_socket(host, port)
    options = {"log_level": log_level, "access_log": access_log}
    procs: list[Any] = []
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for i in range(workers):
            ready = ctx.Event()
            proc = ctx.Process(target=_worker, args=(factory, sock, ready, i, options),
                               name=f"popi-serve-worker-{i}", daemon=False)
            proc.start()
            procs.append(proc)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not ready.wait(0.1):
                if stopping:
                    break
                if not proc.is_alive():
                    print(f"popi serve: worker {i} exited with status {proc.exitcode} while "
                          "starting; stopping.", file=sys.stderr, flush=True)
                    return proc.exitcode or 1
                if time.monotonic() > deadline:
                    print(f"popi serve: worker {i} did not start within {STARTUP_TIMEOUT:g} s; "
                          "stopping.", file=sys.stderr, flush=True)
                    return 1
            if stopping:
                return 0
        print(f"popi serve: {workers} workers (pids {', '.join(str(p.pid) for p in procs)}) on "
              f"http://{host}:{port}", file=sys.stderr, flush=True)
        while not stopping:
            for i, proc in enumerate(procs):
                if not proc.is_alive():
                    print(f"popi serve: worker {i} (pid {proc.pid}) exited with status "
                          f"{proc.exitcode}; stopping the others.", file=sys.stderr, flush=True)
                    status = proc.exitcode or 1
                    stopping = True
                    break
            else:
                time.sleep(0.2)
        return status
    finally:
        for proc in procs:  # uvicorn finishes the requests in flight on SIGTERM
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        sock.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
