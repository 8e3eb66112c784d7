"""The login that LAYERSYNC_TOKEN turns on: every route but a few open ones needs credentials.

Credentials are either the header ``Authorization: Bearer <token>`` (scripts, curl) or the session
cookie the login form sets (browsers; EventSource sends it too). The cookie holds an HMAC of the token,
never the token itself, so a leaked cookie does not reveal the token, and changing the token logs
every browser out.

One middleware rather than a dependency on each router: a route added later is guarded without
anyone remembering to (tests/app/test_auth.py enumerates the routes to prove it).
"""

import hashlib
import hmac
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import Settings

COOKIE = "layersync_session"
LOGIN = "/login"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# open without credentials: the Docker healthcheck probes /api/health, the login page must be
# reachable to log in, and the static files (css, vendored js) hold nothing private
OPEN_PATHS = {"/api/health", LOGIN}
OPEN_PREFIXES = ("/static/",)
API_MESSAGE = (
    "authentication required: send the header 'Authorization: Bearer <token>' with the server's "
    "LAYERSYNC_TOKEN, or log in at /login in a browser"
)


def session_value(token: str) -> str:
    """What the session cookie holds: an HMAC of the token, not the token."""
    return hmac.new(token.encode(), b"layersync-session", hashlib.sha256).hexdigest()


def token_matches(sent: str, token: str) -> bool:
    return hmac.compare_digest(sent.encode(), token.encode())  # constant time: no guessing by timing


def has_session(request: Request, token: str) -> bool:
    return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), session_value(token).encode())


def set_session(response: Response, request: Request, token: str) -> None:
    # HttpOnly: page scripts cannot read it; SameSite=Strict: other sites' forms and fetches go without it
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this server, else "/": the login's redirect must never send a
    user to another site (``//evil.example`` and ``/\\evil.example`` are other sites to a browser)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 32 or c == "\\" for c in target):
        return "/"
    return target


def cross_site_problem(request: Request) -> str | None:
    """Why an unsafe request carrying the session cookie may come from another site, or None.

    SameSite=Strict already keeps the cookie off other sites' requests; this check also covers
    browsers that ignore SameSite and sibling subdomains (which count as the same site).
    """
    sent = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host", "")
    if not sent:
        return ("cross-site check failed: the request has neither an Origin nor a Referer header; submit the form "
                "from LayerSync Studio's own pages, or send 'Authorization: Bearer <token>' from a script")
    origin = urlsplit(sent).netloc
    if origin.lower() != host.lower():
        return (f"cross-site request refused: it came from {sent!r}, not from this server ({host}); submit the form "
                "from LayerSync Studio's own pages, or send 'Authorization: Bearer <token>' from a script")
    return None


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/openapi.json"


def _refusal(request: Request, status: int, message: str) -> Response:
    if _is_api(request.url.path):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    from app.routes.pages import templates  # late: the pages import the app's models and forms

    title = "Login required" if status == 401 else "Request refused"
    return templates.TemplateResponse(request, "error.html", {"title": title, "message": message}, status_code=status)


def _to_login(request: Request) -> Response:
    """A page asked for without credentials: to the login, which comes back to it (GETs only: after
    the login the browser can only GET)."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = f"{LOGIN}?next={quote(wanted if request.method == 'GET' else '/', safe='')}"
    if request.headers.get("HX-Request") == "true":  # htmx would swap the login page into a partial
        return Response(status_code=401, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def check(request: Request, token: str) -> Response | None:
    """None when the request may go on; otherwise the answer that refuses it."""
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, sent = authorization.partition(" ")
        if scheme.lower() == "bearer" and token_matches(sent.strip(), token):
            return None  # a header a browser never adds by itself: not forgeable cross-site
        return _refusal(request, 401, "the Authorization header is wrong: send 'Authorization: Bearer <token>' "
                                      "with the server's LAYERSYNC_TOKEN")
    if has_session(request, token):
        problem = cross_site_problem(request) if request.method in UNSAFE_METHODS else None
        return _refusal(request, 403, problem) if problem else None
    if _is_api(request.url.path):
        return _refusal(request, 401, API_MESSAGE)
    return _to_login(request)


class AuthMiddleware:
    """Refuses requests without credentials when ``settings.token`` is set; passes all through otherwise."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        token = self.settings.token
        if scope["type"] != "http" or not token or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        refusal = check(Request(scope), token)
        await (refusal or self.app)(scope, receive, send)
