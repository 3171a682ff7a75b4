"""The Starlette application: OpenAI-compatible routes, auth, body limits and error shaping."""

from __future__ import annotations

import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from api.errors import APIError, bad_request
from api.protocol import parse_chat, parse_completion
from api.serving import CompletionService


def build_app(service: CompletionService, api_key: str | None = None, max_body_bytes: int = 4 << 20) -> Starlette:
    """The HTTP app over a CompletionService. `api_key`, when set, is required as a Bearer token."""

    async def read_json(request: Request):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise APIError(415, f"content-type must be application/json, got {content_type or 'nothing'!r}")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
            raise APIError(413, f"the request body is larger than {max_body_bytes} bytes")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body_bytes:
                raise APIError(413, f"the request body is larger than {max_body_bytes} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad_request(f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})") from e
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise bad_request(f"the request body is not valid JSON: {e}") from e

    def handler(parse):
        async def endpoint(request: Request) -> Response:
            try:
                req = parse(await read_json(request))
                if req.stream:
                    events = await service.start_stream(req)
                    response = StreamingResponse(events, media_type="text/event-stream",
                                                 headers={"Cache-Control": "no-cache"})
                else:
                    response = JSONResponse(await service.complete(req, request.is_disconnected))
            except APIError as e:
                response = e.response()
            service.metrics.record_request(request.url.path, response.status_code)
            return response
        return endpoint

    async def models(request: Request) -> Response:
        names = sorted(set(service.names.values()))
        now = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": now, "owned_by": "switchyard"} for n in names]})

    async def health(request: Request) -> Response:
        broken = [role for role, e in service.engines.items() if not e.healthy]
        if broken:
            return JSONResponse({"status": "unhealthy", "engines": broken}, status_code=503)
        return JSONResponse({"status": "ok", "in_flight": service.in_flight})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(service.metrics.render(service.engines),
                                 media_type="text/plain; version=0.0.4")

    completions = handler(parse_completion)
    return Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", handler(parse_chat), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={404: _not_found, 405: _not_allowed})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


async def _not_found(request: Request, exc) -> Response:
    return APIError(404, f"no route {request.url.path!r}").response()


async def _not_allowed(request: Request, exc) -> Response:
    return APIError(405, f"method {request.method} is not allowed on {request.url.path!r}").response()
