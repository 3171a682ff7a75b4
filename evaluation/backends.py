"""Where evaluated prompts go: the server's own pipeline in-process, or a running server over HTTP.

Both send what the course client sends, `{"prompt": [...], "max_tokens": 2048}` per batch, and both
are thread-safe, so batches and judge conversations can run concurrently from a thread pool.
"""

from __future__ import annotations

import asyncio
import threading

import httpx

from tasks.infobench_judge import http_chat


class InProcessBackend:
    """The `CompletionService` that `python -m api` builds, driven on a private event loop.

    Requests go through `api.protocol`'s parsing and `CompletionService.complete`, so routing,
    policy and answer handling are exactly the server's; only HTTP is skipped.
    """

    def __init__(self, server_argv: list[str]):
        from api.config import parse_args
        from api.launch import build_service
        self.config = parse_args(server_argv)  # `python -m api`'s settings, a --config preset's included
        self.service = build_service(self.config)
        self.model = self.service.names["large"]
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def _run(self, request) -> dict:
        return asyncio.run_coroutine_threadsafe(self.service.complete(request), self._loop).result()

    def complete(self, body: dict) -> dict:
        """The response body for a /v1/completions request body."""
        from api.protocol import parse_completion
        return self._run(parse_completion(body))

    def chat(self, messages: list[dict], temperature: float | None = None) -> str:
        """The reply text for a chat conversation (the judge's turns)."""
        from api.protocol import parse_chat
        body = {"messages": messages, **({"temperature": temperature} if temperature is not None else {})}
        return self._run(parse_chat(body))["choices"][0]["message"]["content"] or ""

    def close(self) -> None:
        """Stop the engines' loops, then the event loop."""
        for engine in {id(e): e for e in self.service.engines.values()}.values():
            asyncio.run_coroutine_threadsafe(engine.shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)


class HttpBackend:
    """A running Switchyard (or any OpenAI-compatible) server at `url`, e.g. http://127.0.0.1:8000."""

    def __init__(self, url: str, timeout_s: float = 1800.0):
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)
        models = self._client.get(f"{self.url}/v1/models")
        models.raise_for_status()
        self.model = models.json()["data"][0]["id"]
        self._chats: dict[float | None, object] = {}

    def complete(self, body: dict) -> dict:
        response = self._client.post(f"{self.url}/v1/completions", json=body)
        response.raise_for_status()
        return response.json()

    def chat(self, messages: list[dict], temperature: float | None = None) -> str:
        if temperature not in self._chats:
            self._chats[temperature] = http_chat(f"{self.url}/v1", self.model, temperature=temperature)
        return self._chats[temperature](messages)

    def close(self) -> None:
        self._client.close()
