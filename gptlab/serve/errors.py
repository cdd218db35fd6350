"""Every error the server answers, ours or the framework's, as OpenAI shapes it: {"error": {"message", "type"}}.

OpenAI clients map the status to an exception class and show the message, so each message says what
to change; `error_for` is the one table from exception to (status, message, type), shared by the
JSON error responses and by the error event of a stream that has already started. No message
carries a path of the server's disk (see `gptlab.serve.redact`).
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
from gptlab.serve.limits import Busy, ClientGone, DeadlineExceeded
from gptlab.serve.redact import hide_paths
from gptlab.serve.registry import ModelBroken, ModelNotFound, ModelRefused
from gptlab.serve.schemas import INVALID_UNICODE

log = logging.getLogger("gptlab.serve")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
# nginx's status for "the client closed the connection before the answer": nobody receives it, the log shows it.
CLIENT_CLOSED = 499


class APIError(Exception):
    """A request the server refuses, with the status, OpenAI error type and the field (param) at fault."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param


class ErrorJSON(JSONResponse):
    """JSON that renders whatever an error echoes: a lone surrogate in the client's own text (a field
    name, a model name) is written as its \\u escape instead of failing to encode, which would turn the
    error into a 500 with a traceback."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, type: str, param: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": type}
    if param:
        err["param"] = param
    return ErrorJSON({"error": err}, status_code=status, headers=headers)


def error_for(exc: BaseException) -> tuple[int, str, str, dict[str, str] | None]:
    """(status, message, type, headers) of an exception raised while answering."""
    if isinstance(exc, APIError):
        return exc.status, exc.message, exc.type, None
    if isinstance(exc, UserError):  # the library's words, which may name files by their full path
        return 400, hide_paths(str(exc)), "invalid_request_error", None
    if isinstance(exc, ModelNotFound):
        return 404, f"model {exc.args[0]!r} is not served here: GET /v1/models lists the models", "not_found", None
    if isinstance(exc, ModelRefused):
        name, file = exc.args
        return (403, f"model {name!r} is refused: its {file} lies outside the server's models folder (a link out "
                     "of it), and the server reads no file from there", "permission_error", None)
    if isinstance(exc, ModelBroken):
        return 500, hide_paths(str(exc)), "model_error", None
    if isinstance(exc, ClientGone):
        return CLIENT_CLOSED, "the client closed the connection before the answer was ready", "client_closed", None
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
        if e.get("type") == INVALID_UNICODE:  # not a shape the schema rejects: text no encoding can carry
            ctx = e.get("ctx", {})
            return error_response(400, str(e.get("msg")), "invalid_request_error", ctx.get("param"))
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
    for cls in (APIError, UserError, ModelNotFound, ModelRefused, ModelBroken, Busy, DeadlineExceeded, ClientGone):
        app.exception_handler(cls)(_known_error)
    app.exception_handler(Exception)(_unexpected_error)
