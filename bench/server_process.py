"""`python -m api` as a subprocess of a benchmark: started from this checkout, ready once GET /health
answers, stopped with SIGTERM, and if it does not exit in time, made to print every thread's stack
(SIGUSR1) before it is killed, so a stuck shutdown leaves its reason in the log. Before the signal, the
log also gets each thread's kernel-side state from /proc and the GPU's utilization: a process whose
threads sit in the driver cannot run its signal handler, and then those lines are all there is."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
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


def _last_line(log: Path) -> str:
    """The log's last non-empty line: what a server that exited at start said last (its error)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def thread_states(pid: int) -> str:
    """One line per thread of process `pid`: its name, scheduler state (R running, S sleeping, D in an
    uninterruptible wait, typically the kernel or a driver) and the kernel function it waits in, plus
    its kernel stack where readable (root only). Read from /proc, so it needs nothing of the process."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
            wchan = (task / "wchan").read_text().strip().strip("0") or "-"  # "0": running, no wait
            stack = ""
            with contextlib.suppress(OSError):
                stack = " | ".join(line.split()[-1] for line in (task / "stack").read_text().splitlines()[:6])
            lines.append(f"thread {task.name} {name!r}: state {state}, waits in {wchan}"
                         + (f" [{stack}]" if stack else ""))
    return "\n".join(lines)


def gpu_utilization() -> str:
    """nvidia-smi's view of the GPUs (a kernel that never ends shows as 100% busy), or '' without one."""
    if shutil.which("nvidia-smi") is None:
        return ""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        return subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    return ""


def _record_stuck(proc: subprocess.Popen, out) -> None:
    report = (f"--- the server did not exit after SIGTERM; its threads (from /proc):\n{thread_states(proc.pid)}\n"
              f"--- GPUs (index, utilization, memory used): {gpu_utilization() or 'none'}\n")
    if out is not None:
        out.write(report.encode())
        out.flush()
    else:
        print(report, file=sys.stderr, flush=True)


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
                said = _last_line(log) if log is not None else ""
                raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready"
                                   + (f": {said}" if said else ""))
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
            _record_stuck(proc, out)
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # the dump takes a moment; the handler does not end the process
            proc.kill()
            proc.wait()
        if out is not None:
            out.close()
