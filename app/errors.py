"""Error answers: every bad request gets a 4xx whose message says what was wrong and what to do.

422 bodies have one shape whatever caught the problem (FastAPI's request parsing or the run
config schema): ``{"detail": [{"loc": ["body", "layersync_lambda"], "msg": "..."}]}``; a
config key's message is exactly the CLI's.
"""

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from app.runs import NotFound, RunStateError
from trainer.config import ConfigError
from trainer.problems import error_words, printable


class Problem(BaseModel):
    loc: list[str | int]
    msg: str


class Problems(BaseModel):
    detail: list[Problem]


class Message(BaseModel):
    detail: str


# the shapes of the error answers, for the OpenAPI schema (clients and the fuzzer read them there)
INVALID = {422: {"model": Problems, "description": "What was wrong with the request, one message per field"},
           400: {"model": Message, "description": "The body could not be read (it is not UTF-8 JSON)"}}
UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's words for a body it cannot decode
RUN_ERRORS = {404: {"model": Message, "description": "No such run"},
              409: {"model": Message, "description": "The run's state does not allow this"}}

JSON_KINDS = {list: "a list", str: "text", int: "a number", float: "a number", bool: "true or false", type(None): "null"}
EXAMPLE = '{"layersync_enabled": true, "layersync_student_block": 8, "layersync_teacher_block": 16}'


def human_message(error: dict) -> str:
    """One of FastAPI's request errors in words a person understands (a value's words are the config's)."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    names = [part for part in loc[1:] if isinstance(part, str)]  # an item of a list is named by its list
    where, name = loc[0], printable(names[-1]) if names else "the body"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({ctx.get('error', 'cannot parse it')}): send one JSON object, e.g. {EXAMPLE}"
    if where == "body" and kind == "missing":
        return f"the body is empty: send the run's config as one JSON object, e.g. {EXAMPLE}"
    if where == "body" and kind == "dict_type" and isinstance(value, bytes):
        return f"the body was not sent as JSON: send it with the header Content-Type: application/json, e.g. {EXAMPLE}"
    if where == "body" and kind == "dict_type":
        return f"the config must be a JSON object of keys and values, got {JSON_KINDS.get(type(value), 'something else')}: e.g. {EXAMPLE}"
    return f"{name} {error_words(error)}"


def _detail(status: int, detail) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _detail(422, [{"loc": [printable(part) if isinstance(part, str) else part for part in error["loc"]],
                          "msg": human_message(error)} for error in exc.errors()])


async def _config_invalid(request: Request, exc: ConfigError) -> JSONResponse:
    return _detail(422, [{"loc": ["body", key] if key else ["body"], "msg": message} for key, message in exc.errors])


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
        return _detail(400, f"the body could not be read: send one JSON object in UTF-8, e.g. {EXAMPLE}")
    return await http_exception_handler(request, exc)


async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
    return _detail(404, str(exc))


async def _conflict(request: Request, exc: RunStateError) -> JSONResponse:
    return _detail(409, str(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ConfigError, _config_invalid)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(RunStateError, _conflict)
