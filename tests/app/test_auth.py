"""LAYERSYNC_TOKEN: every route but the open ones is refused without credentials and served with them;
the login, its cookie and its redirect; cross-site posts; the serve warning."""

import re

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from app import auth
from app.cli import Server, main
from app.main import create_app
from tests.utils.server import app_settings

TOKEN = "correct-horse-battery-staple"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SAME_ORIGIN = {"Origin": "http://testserver"}  # TestClient's own base URL
OPEN = {"/api/health", "/login"}
MISSING_ID = "999999"  # no such run: a guarded route answers 404 itself, and nothing long-lived (SSE) starts


@pytest.fixture
def guarded(tmp_path):
    """The app with a token set, lifespan running, no worker slots."""
    with TestClient(create_app(app_settings(tmp_path / "data", token=TOKEN))) as client:
        yield client


def log_in(client: TestClient) -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, headers=SAME_ORIGIN, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.cookies[auth.COOKIE]


def flat_routes(routes, prefix: str = ""):
    """(path, methods) of every endpoint, descending into included routers: recent FastAPI keeps an
    included router whole in app.routes instead of copying its routes there."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from flat_routes(included.routes, prefix + route.include_context.prefix)
        elif not isinstance(route, Mount):  # /static is open on purpose
            yield prefix + route.path, route.methods


def guarded_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app but the open ones, path parameters filled in."""
    found = []
    for path, methods in flat_routes(app.routes):
        if path not in OPEN:
            found += [(method, re.sub(r"\{[^}]+\}", MISSING_ID, path)) for method in sorted(methods - {"HEAD"})]
    return found


def refused(response, path: str) -> bool:
    """Whether the auth layer turned the request away (not the route answering it)."""
    if path.startswith("/api/") or path == "/openapi.json":
        return response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]
    return response.status_code == 303 and response.headers["location"].startswith("/login?next=")


def test_every_route_is_refused_without_credentials_and_served_with_them(guarded):
    routes = guarded_routes(guarded.app)
    # the enumeration itself must see the app: the API, the pages, the docs and the logout
    assert {("POST", "/api/runs"), ("GET", f"/api/runs/{MISSING_ID}/events"), ("DELETE", f"/api/runs/{MISSING_ID}"),
            ("GET", "/"), ("POST", "/runs/new"), ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/logout")} <= set(routes)
    cookie = log_in(guarded)
    for method, path in routes:
        guarded.cookies.clear()
        anonymous = guarded.request(method, path, headers=SAME_ORIGIN, follow_redirects=False)
        assert refused(anonymous, path), f"{method} {path} without credentials: {anonymous.status_code} {anonymous.text[:200]}"
        with_bearer = guarded.request(method, path, headers=BEARER, follow_redirects=False)
        assert not refused(with_bearer, path) and with_bearer.status_code != 403, f"{method} {path} with the token"
        guarded.cookies.set(auth.COOKIE, cookie)
        with_cookie = guarded.request(method, path, headers=SAME_ORIGIN, follow_redirects=False)
        assert not refused(with_cookie, path) and with_cookie.status_code != 403, f"{method} {path} with the cookie"


def test_the_open_routes_need_nothing(guarded):
    assert guarded.get("/api/health").json()["status"] == "ok"  # the Docker healthcheck
    assert guarded.get("/static/app.css").status_code == 200
    assert guarded.get("/login").status_code == 200


def test_a_page_asked_for_without_login_comes_back_after_it(guarded):
    response = guarded.get("/compare?metric=loss", follow_redirects=False)
    assert response.headers["location"] == "/login?next=%2Fcompare%3Fmetric%3Dloss"
    form = guarded.get(response.headers["location"])
    assert 'name="next" value="/compare?metric=loss"' in form.text
    done = guarded.post("/login", data={"token": TOKEN, "next": "/compare?metric=loss"}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, "/compare?metric=loss")
    assert guarded.get("/compare?metric=loss").status_code == 200
    assert 'action="/logout"' in guarded.get("/").text


def test_the_cookie_is_http_only_strict_and_not_the_token(guarded):
    response = guarded.post("/login", data={"token": TOKEN}, follow_redirects=False)
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and TOKEN not in header
    assert response.cookies[auth.COOKIE] == auth.session_value(TOKEN)


def test_a_wrong_token_is_refused_with_a_message(guarded):
    response = guarded.post("/login", data={"token": "guess", "next": "/"}, follow_redirects=False)
    assert response.status_code == 401 and "that token is wrong" in response.text
    assert auth.COOKIE not in response.cookies
    bearer = guarded.get("/api/runs", headers={"Authorization": "Bearer guess"})
    assert bearer.status_code == 401 and "Authorization header is wrong" in bearer.json()["detail"]
    guarded.cookies.set(auth.COOKIE, TOKEN)  # the token itself is not a session
    forged = guarded.get("/api/runs")
    assert forged.status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "evil", "/\x01x"])
def test_the_login_never_redirects_to_another_site(guarded, target):
    response = guarded.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/")


def test_cross_site_posts_with_the_cookie_are_refused(guarded):
    log_in(guarded)
    evil = guarded.post("/runs/new", data={}, headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert evil.status_code == 403 and "cross-site request refused" in evil.text
    bare = guarded.post("/api/runs", json={})  # neither Origin nor Referer
    assert bare.status_code == 403 and "neither an Origin nor a Referer" in bare.json()["detail"]
    assert guarded.get("/api/runs").json()["total"] == 0  # nothing was created
    referred = guarded.post("/api/runs", json={}, headers={"Referer": "http://testserver/runs/new"})
    assert referred.status_code == 201
    scripted = guarded.post("/api/runs", json={}, headers={**BEARER, "Origin": "https://evil.example"})
    assert scripted.status_code == 201  # a bearer token cannot be sent by another site's form


def test_the_event_stream_works_with_the_cookie(guarded):
    run = guarded.post("/api/runs", json={}, headers=BEARER).json()
    guarded.post(f"{run['url']}/cancel", headers=BEARER)  # ended: the stream replays, then closes
    log_in(guarded)
    with guarded.stream("GET", f"{run['url']}/events") as stream:
        body = "".join(stream.iter_text())
    assert stream.status_code == 200 and "event: end" in body


def test_htmx_requests_without_login_are_sent_to_the_login_page(guarded):
    response = guarded.get("/partials/runs", headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["HX-Redirect"] == "/login?next=%2Fpartials%2Fruns"


def test_logout_forgets_the_session(guarded):
    log_in(guarded)
    response = guarded.post("/logout", headers=SAME_ORIGIN, follow_redirects=False)
    assert response.headers["location"] == "/login" and auth.COOKIE not in guarded.cookies
    assert guarded.get("/", follow_redirects=False).status_code == 303


def test_without_a_token_nothing_asks_for_a_login(client):
    assert client.get("/").status_code == 200 and client.post("/api/runs", json={}).status_code == 201
    assert client.get("/login?next=/compare", follow_redirects=False).headers["location"] == "/compare"
    assert 'action="/logout"' not in client.get("/").text


@pytest.mark.parametrize("token, warned", [(None, True), ("s3cret", False)])
def test_serve_beyond_this_machine_warns_only_without_a_token(monkeypatch, capsys, tmp_path, token, warned):
    monkeypatch.setattr(Server, "run", lambda server: setattr(server, "started", True))  # started, not served
    if token:
        monkeypatch.setenv("LAYERSYNC_TOKEN", token)
    else:
        monkeypatch.delenv("LAYERSYNC_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert ("without LAYERSYNC_TOKEN" in err) == warned and ("warning" in err) == warned
