"""The login form that LAYERSYNC_TOKEN turns on (see app.auth), and logging out."""

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app import auth
from app.routes.pages import templates

router = APIRouter(include_in_schema=False)

WRONG_TOKEN = ("that token is wrong: enter the value of LAYERSYNC_TOKEN the server was started with "
               "(ask whoever runs the server)")


def _login_form(request: Request, *, next_url: str, error: str = "", status_code: int = 200) -> HTMLResponse:
    context = {"next_url": next_url, "error": error, "nav": "login"}
    return templates.TemplateResponse(request, "login.html", context, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: Annotated[str, Query(max_length=2000)] = "/"):  # noqa: A002 - the usual name
    """The login form; straight on to the page asked for when no login is needed or the browser has one."""
    token, next_url = request.app.state.settings.token, auth.local_path(next)
    if not token or auth.has_session(request, token):
        return RedirectResponse(next_url, status_code=303)
    return _login_form(request, next_url=next_url)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):  # noqa: A002
    """Check the token: 303 to the page asked for with the session cookie, or the form again (401)."""
    expected, next_url = request.app.state.settings.token, auth.local_path(next)
    if not expected:
        return RedirectResponse(next_url, status_code=303)
    if not token.strip():
        return _login_form(request, next_url=next_url, error="enter the token (LAYERSYNC_TOKEN)", status_code=401)
    if not auth.token_matches(token.strip(), expected):
        return _login_form(request, next_url=next_url, error=WRONG_TOKEN, status_code=401)
    response = RedirectResponse(next_url, status_code=303)
    auth.set_session(response, request, expected)
    return response


@router.post("/logout")
def logout(request: Request):
    """Forget the session cookie and show the login form."""
    response = RedirectResponse(auth.LOGIN if request.app.state.settings.token else "/", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
    return response
