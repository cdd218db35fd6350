"""Every error the server answers, ours or the framework's, as OpenAI shapes it: {"error": {"message", "type"}}.

OpenAI clients map the status to an exception class and show the message, so each message says what
to change; `error_for` is the one table from exception to (status, message, type), shared by the
JSON error responses and by the error event of a stream that has already started.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab.errors import UserError
from gptlab.serve.limits import Busy, DeadlineExceeded
from gptlab.serve.registry import ModelBroken, ModelNotFound

log = logging.getLogger("gptlab.serve")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class APIError(Exception):
    """A request the server refuses, with the status, OpenAI error type and the field (param) at fault."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param


def error_response(status: int, message: str, type: str, param: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": type}
    if param:
        err["param"] = param
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def error_for(exc: BaseException) -> tuple[int, str, str, dict[str, str] | None]:
    """(status, message, type, headers) of an exception raised while answering."""
    if isinstance(exc, APIError):
        return exc.status, exc.message, exc.type, None
    if isinstance(exc, UserError):
        return 400, str(exc), "invalid_request_error", None
    if isinstance(exc, ModelNotFound):
        return 404, f"model {exc.args[0]!r} is not served here: GET /v1/models lists the models", "not_found", None
    if isinstance(exc, ModelBroken):
        return 500, str(exc), "model_error", None
    if isinstance(exc, Busy):
        return (429, "the server is busy (every worker and queue place is taken): retry in a moment", "server_busy",
                {"Retry-After": "1"})
    if isinstance(exc, DeadlineExceeded):
        return 504, "the request took longer than the server's limit: ask for fewer tokens or retry later", "timeout", None
    return 500, "internal error while answering; the server log has the details", "server_error", None


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}: the API is under /v1 (see /openapi.json)"
    return error_response(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "http_error"),
                          headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts: list[str] = []
    param = None
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            reason = e.get("ctx", {}).get("error", "decode error")
            return error_response(422, f"the request body is not valid JSON ({reason}): send a JSON object",
                                  "invalid_request_error")
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        param = param or (loc[0] if loc else None)
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
    return error_response(422, "invalid request: " + "; ".join(parts), "invalid_request_error", param)


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    status, message, type_, headers = error_for(exc)
    return error_response(status, message, type_, getattr(exc, "param", None), headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("error answering %s %s", request.method, request.url.path)
    status, message, type_, headers = error_for(exc)
    return error_response(status, message, type_, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    # The decorator, called directly: unlike add_exception_handler it is typed to take a handler of
    # one exception class (its `exc` narrower than Exception).
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    for cls in (APIError, UserError, ModelNotFound, ModelBroken, Busy, DeadlineExceeded):
        app.exception_handler(cls)(_known_error)
    app.exception_handler(Exception)(_unexpected_error)
