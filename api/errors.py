"""OpenAI-style errors: every refusal becomes `{"error": {...}}` with its HTTP status, the same body
whether it ends a whole response or a stream."""

from __future__ import annotations

from starlette.responses import JSONResponse

_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class APIError(Exception):
    """Raised anywhere in request handling; turned into `{"error": {...}}` with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def unavailable(message: str) -> APIError:
    """The server cannot serve now (an engine died, or it is shutting down): retry elsewhere or later."""
    return APIError(503, message, code="unavailable", headers={"Retry-After": "1"})
