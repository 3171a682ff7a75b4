"""The Starlette application: OpenAI-compatible routes, the API key, body limits and error shaping.

`python -m api` and the Modal deployment serve this same app.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.completions import CompletionService, StreamJob
from api.errors import APIError
from api.protocol import decode_json, parse_chat, parse_completion

logger = logging.getLogger(__name__)


class _StreamResponse(StreamingResponse):
    """An SSE response that closes its job (slots, engine requests) however the response ends,
    even if the client is gone before the first event is sent."""

    def __init__(self, job: StreamJob):
        super().__init__(job.events_sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.job.close()


class _RequireKey:
    """ASGI middleware: every HTTP route but the public ones needs 'Authorization: Bearer <key>'."""

    def __init__(self, app, key: str, public_paths: tuple[str, ...]):
        self.app, self.public_paths = app, frozenset(public_paths)
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.public_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                                    code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Request, max_bytes: int, timeout: float, service: CompletionService) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise APIError(415, f"content-type must be application/json, got {content_type or 'nothing'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise APIError(413, f"the request body is larger than {max_bytes} bytes")
    body = bytearray()

    async def read():
        async for piece in request.stream():
            body.extend(piece)
            if len(body) > max_bytes:
                raise APIError(413, f"the request body is larger than {max_bytes} bytes")

    # A body that trickles in (or never comes) must not hold the connection past the timeout, nor
    # keep a shutting-down server waiting.
    reading, aborted = asyncio.ensure_future(read()), asyncio.ensure_future(service.until_aborted())
    try:
        await asyncio.wait({reading, aborted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            if aborted.done():
                raise service.aborting
            raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="timeout")
        reading.result()
    finally:
        reading.cancel()
        aborted.cancel()
    return bytes(body)


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (its body is read: the next message can only be that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(service: CompletionService, *, api_key: str | None = None, public_paths: tuple[str, ...] = ("/health",),
              max_body_bytes: int = 4 << 20, body_timeout: float = 30.0) -> Starlette:
    """The HTTP app over a CompletionService."""

    def handler(parse):
        async def endpoint(request: Request) -> Response:
            try:
                req = parse(decode_json(await _read_body(request, max_body_bytes, body_timeout, service)))
                if req.stream:
                    response = _StreamResponse(await service.start_stream(req))
                else:
                    response = JSONResponse(await service.complete(req, lambda: _disconnect(request)))
            except APIError as e:
                response = e.response()
            except Exception as e:  # a bug: this request gets a 500 with what went wrong, the server goes on
                logger.exception("unexpected error serving %s", request.url.path)
                response = APIError(500, f"internal error: {type(e).__name__}: {e}").response()
            service.metrics.record_request(request.url.path, response.status_code)
            return response
        return endpoint

    async def models(request: Request) -> Response:
        now = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": now, "owned_by": "switchyard"}
            for n in sorted(set(service.names.values()))]})

    async def health(request: Request) -> Response:
        broken = sorted({role for role, e in service.engines.items() if not e.healthy})
        # An engine whose step has run for minutes is alive but serves nobody: an orchestrator should
        # restart the server as it would a dead one.
        stalled = {role: round(e.stalled_seconds) for role, e in service.engines.items() if e.healthy and e.stalled}
        if broken or stalled:
            body = {"status": "unhealthy", "engines": sorted(set(broken) | set(stalled))}
            if stalled:
                body["stalled_step_seconds"] = stalled
            return JSONResponse(body, status_code=503)
        if service.closing is not None:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "in_flight": service.in_flight})

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    completions = handler(parse_completion)
    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/", completions, methods=["POST"]),  # the course's client posts to the bare URL
        Route("/v1/chat/completions", handler(parse_chat), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={404: _not_found, 405: _not_allowed})
    if api_key is not None:
        app.add_middleware(_RequireKey, key=api_key, public_paths=public_paths)
    return app


async def _not_found(request: Request, exc) -> Response:
    return APIError(404, f"no route {request.url.path!r}").response()


async def _not_allowed(request: Request, exc) -> Response:
    return APIError(405, f"method {request.method} is not allowed on {request.url.path!r}").response()
