"""Every error as OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``, so clients raise their usual exceptions."""

from __future__ import annotations

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
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


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


def _count_error(request: Request) -> None:
    request.app.state.counters["errors"] += 1


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    _count_error(request)
    return exc.response()


async def _adaptrix_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdaptrixError)
    _count_error(request)
    return from_adaptrix(exc).response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count_error(request)
    problems = []
    param = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = param or ".".join(loc) or None
        problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    return error_response(400, "invalid request: " + "; ".join(problems), param=param, code="invalid_request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    _count_error(request)
    kind = "not_found" if exc.status_code == 404 else None
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    _count_error(request)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in OpenAI's shape and count it in ``app.state.counters['errors']``."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(AdaptrixError, _adaptrix_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
