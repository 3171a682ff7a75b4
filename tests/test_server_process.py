"""`python -m api` as a process: SIGTERM with a stalled body and streams in flight exits 0 in time,
a crowd of idle connections neither locks out a new client nor floods the log, a busy port fails
before the model loads, a dying engine makes the process exit non-zero, and so does one whose step
never ends (after /health has said so), without waiting for it."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m api ARGS` in a subprocess, its log in a file."""

    def __init__(self, args: list[str], log: Path, code: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "api"]
        self._log_file = open(log, "wb")  # noqa: SIM115 (open for the process's whole life)
        self.proc = subprocess.Popen([*command, *args, "--port", str(self.port)], cwd=ROOT,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def tiny_args(tiny_model_dir):
    return ["--model", str(tiny_model_dir), "--max-model-len", "4096"]


def test_sigterm_with_a_stalled_body_and_twenty_streams_exits_0(tiny_args, tmp_path):
    srv = ServerProcess([*tiny_args, "--graceful-shutdown-timeout", "3"], tmp_path / "log")
    try:
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"prompt\":")  # the rest never comes
        started = asyncio.Event()
        first_chunks = 0

        async def stream(http, i):
            nonlocal first_chunks
            body = {"prompt": f"stream {i}", "max_tokens": 3000, "ignore_eos": True, "stream": True}
            lines = []
            async with http.stream("POST", srv.url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and not lines:
                        first_chunks += 1
                        if first_chunks == 20:
                            started.set()
                    if line:
                        lines.append(line)
            return lines

        async def main():
            async with httpx.AsyncClient(timeout=60) as http:
                tasks = [asyncio.create_task(stream(http, i)) for i in range(20)]
                await asyncio.wait_for(started.wait(), 60)
                os.kill(srv.proc.pid, signal.SIGTERM)
                signalled = time.monotonic()
                results = await asyncio.gather(*tasks)
                return signalled, results

        signalled, results = asyncio.run(main())
        assert srv.proc.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 30
        for lines in results:  # every stream ended cleanly: an error naming the shutdown, then [DONE]
            assert lines[-1] == "data: [DONE]" and "shut down" in lines[-2], lines[-3:]
        stalled.close()
    finally:
        srv.close()


def test_two_thousand_idle_connections(tiny_args, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    srv = ServerProcess([*tiny_args, "--timeout-keep-alive", "2", "--header-timeout", "2"], tmp_path / "log")
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", srv.port)))
        idle[0].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # half a head, then nothing
        start = time.monotonic()
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=10)
        assert r.status_code == 200 and time.monotonic() - start < 2
        time.sleep(3.5)  # past the head deadline: every idle connection has been closed by the server
        for sock in idle:
            sock.settimeout(2)
            assert sock.recv(1) == b""
        assert srv.log.stat().st_size < 20_000, srv.log.read_text()[-2000:]
        # SIGUSR1 prints every thread's stack (the engine's too) and the server carries on.
        srv.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        dump = srv.log.read_text()
        assert dump.count("most recent call first") >= 2 and "async_engine.py" in dump, dump[-2000:]
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()
        srv.close()


def test_busy_port_fails_before_loading(tiny_args):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "api", *tiny_args, "--port", str(port)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "loading" not in run.stderr and time.monotonic() - start < 30


# An engine whose stepping loop breaks as soon as it holds a request (a stand-in for a bug).
_BROKEN_ENGINE = """
import sys
import scheduler.engine as engine
working = engine.LLMEngine.has_unfinished_requests
def broken(self):
    if self._requests:
        raise RuntimeError("injected bug in the engine loop")
    return working(self)
engine.LLMEngine.has_unfinished_requests = broken
from api.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_dead_engine_answers_503_and_exits_non_zero(tiny_args, tmp_path):
    srv = ServerProcess(tiny_args, tmp_path / "log", code=_BROKEN_ENGINE)
    try:
        start = time.monotonic()
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and time.monotonic() - start < 5, r.text
        assert "has stopped" in r.json()["error"]["message"]
        assert srv.proc.wait(timeout=30) == 1
    finally:
        srv.close()


_STUCK_STEP = """
import sys, threading
import scheduler.engine as engine
from scheduler.async_engine import AsyncEngine, StepLoop
StepLoop.STALL_SECONDS, StepLoop.WATCH_SECONDS, AsyncEngine.STOP_SECONDS = 1.0, 0.1, 2.0
def stuck(self):
    threading.Event().wait()  # as a step whose GPU kernel never ends
engine.LLMEngine.step = stuck
from api.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stuck_step_turns_health_503_and_the_server_exits_without_it(tiny_args, tmp_path):
    srv = ServerProcess([*tiny_args, "--graceful-shutdown-timeout", "1"], tmp_path / "log", code=_STUCK_STEP)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=2)
        deadline = time.monotonic() + 10
        while (health := httpx.get(srv.url + "/health", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "/health never reported the stalled step"
            time.sleep(0.1)
        # One model: its engine serves both roles, and both are named.
        assert health.status_code == 503 and health.json()["engines"] == ["large", "small"], health.text
        assert health.json()["stalled_step_seconds"]["large"] >= 1
        stopped = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=30) == 1
        assert time.monotonic() - stopped < 15  # the grace, the stop's 2 s, no wait for the stuck thread
        log = srv.log.read_text()
        assert "a step has run for" in log and "exiting with engine 'large' still in a step" in log
    finally:
        srv.close()

