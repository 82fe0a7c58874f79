"""Every error as OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``, so clients raise their usual exceptions."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..exceptions import AdapterInUseError, AdapterNotFoundError, AdaptrixError


class APIError(Exception):
    """An error answered with OpenAI's JSON shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
        code: str | None = None,
    ) -> None:
        message = _printable(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = None if param is None else _printable(param)
        self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _printable(text: str) -> str:
    """*text* with any lone surrogate escaped (``\\ud800``), so the JSON answer can always be encoded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
    code: str | None = None,
) -> JSONResponse:
    return APIError(status, message, type=type, param=param, code=code).response()


def from_adaptrix(e: AdaptrixError, param: str | None = "model") -> APIError:
    """The HTTP status of an Adaptrix error: unknown adapter 404, adapter in use 409, anything else 400."""
    if isinstance(e, AdapterNotFoundError):
        return APIError(404, str(e), param=param, code="model_not_found")
    if isinstance(e, AdapterInUseError):
        return APIError(409, str(e), param=param, code="adapter_in_use")
    return APIError(400, str(e), param=param, code=type(e).__name__)


def _count_error(request: Request, status: int) -> None:
    request.app.state.metrics.error(status)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    _count_error(request, exc.status)
    return exc.response()


async def _adaptrix_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdaptrixError)
    error = from_adaptrix(exc)
    _count_error(request, error.status)
    return error.response()


def _is_union_tag(part: object) -> bool:
    """pydantic puts the union member tried (``str``, ``list[TextPart]``, ``function-after[...]``) into ``loc``."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _problems(errors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """
    (field, message) per problem, union tags removed. Where a union's members all failed, the "wrong type"
    complaints of the members that do not fit are dropped when another member says what is really wrong.
    """
    found: dict[tuple[str, bool], list[str]] = {}
    for err in errors:
        loc = [p for p in err.get("loc", ()) if p != "body"]
        field = ".".join(str(p) for p in loc if not _is_union_tag(p)) or "body"
        wrong_type = str(err.get("type", "")).endswith("_type") and any(_is_union_tag(p) for p in loc)
        found.setdefault((field, wrong_type), []).append(str(err.get("msg")))
    fields = [f for f, _ in found]
    problems = []
    for (field, wrong_type), messages in found.items():
        if wrong_type and (field, False) in found:
            continue
        if wrong_type and any(other != field and other.startswith(field + ".") for other in fields):
            continue
        problems.extend((field, m) for m in dict.fromkeys(messages))
    return problems


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count_error(request, 400)
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "cannot parse it")
            return error_response(400, f"request body is not valid JSON: {reason} at character {where}.",
                                  param="body", code="invalid_json")
    problems = _problems(exc.errors())
    param = problems[0][0] if problems and problems[0][0] != "body" else None
    message = "invalid request: " + "; ".join(f"{field}: {msg}" for field, msg in problems)
    return error_response(400, message, param=param, code="invalid_request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    _count_error(request, exc.status_code)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_body" if exc.status_code == 400 else None)
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    _count_error(request, 500)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in OpenAI's shape and count it in ``app.state.metrics``."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(AdaptrixError, _adaptrix_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
