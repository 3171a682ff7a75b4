"""A real Switchyard HTTP server on 127.0.0.1 in a background thread, for the API tests."""

from __future__ import annotations

import threading
import time

from api.config import parse_args
from api.launch import Server, app_for, build_service, uvicorn_config
from bench.server_process import free_port


class RunningServer:
    """`python -m api ARGV` served from a thread of this process, so tests can inspect its engines."""

    def __init__(self, argv: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = parse_args([*argv, "--port", str(self.port)])
        self.service = build_service(self.config)
        self.server = Server(uvicorn_config(app_for(self.service, self.config), self.config), self.service,
                             self.config.graceful_shutdown_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def engines(self):
        return {id(e): e.engine for e in self.service.engines.values()}.values()

    def blocks_in_use(self) -> int:
        return sum(e.num_kv_blocks - e.scheduler.block_manager.num_free_blocks for e in self.engines())

    def settled(self, timeout: float = 30) -> bool:
        """Wait until no KV block and no admission slot is held (aborts land between engine steps)."""
        deadline = time.monotonic() + timeout
        while (self.blocks_in_use() or self.service.in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.blocks_in_use() and not self.service.in_flight

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
