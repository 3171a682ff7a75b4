"""A real Switchyard HTTP server on 127.0.0.1 in a background thread, for the API tests."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from api.__main__ import build_service, parse_args
from api.server import build_app


class RunningServer:
    def __init__(self, argv: list[str], api_key: str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = build_service(parse_args(argv))
        app = build_app(self.service, api_key=api_key, max_body_bytes=1 << 20)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def engines(self):
        return {id(e.engine): e.engine for e in self.service.engines.values()}.values()

    def blocks_in_use(self) -> int:
        return sum(e.num_kv_blocks - e.scheduler.block_manager.num_free_blocks for e in self.engines())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
