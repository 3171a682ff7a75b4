"""`python -m api` as a subprocess of a benchmark: started from this checkout, ready once GET /health
answers, stopped with SIGTERM, and if it does not exit in time, made to print every thread's stack
(SIGUSR1) before it is killed, so a stuck shutdown leaves its reason in the log."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    url: str
    proc: subprocess.Popen
    exit_seconds: float | None = None  # how long it took to exit after SIGTERM; None: it had to be killed


@contextlib.contextmanager
def running_server(argv: list[str], port: int = 0, ready_timeout: float = 900.0, log: Path | None = None,
                   exit_timeout: float = 60.0):
    """Start `python -m api ARGV --port PORT` (its output to `log` if given); yields a Server once healthy."""
    port = port or free_port()
    out = open(log, "wb") if log is not None else None  # noqa: SIM115 (open for the process's whole life)
    proc = subprocess.Popen([sys.executable, "-m", "api", *argv, "--port", str(port)], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT if out else None)
    server = Server(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no healthy server at {server.url} after {ready_timeout:g} s")
            time.sleep(0.5)
        yield server
    finally:
        stopped = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=exit_timeout)
            server.exit_seconds = time.monotonic() - stopped
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log
            time.sleep(1)
            proc.kill()
            proc.wait()
        if out is not None:
            out.close()
