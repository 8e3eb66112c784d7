"""The request-body bound: 413 at once from Content-Length, and for a chunked body as soon as it passes
the bound, without the server reading the rest."""

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest

from app.limits import MAX_BODY_BYTES, BodyLimit
from tests.utils.server import app_settings, live_server
from tests.utils.waiting import PATIENCE_S

BIG_PROMPT = "x" * (MAX_BODY_BYTES + 1)


def test_a_large_json_body_is_refused_with_413_and_nothing_is_stored(client):
    response = client.post("/api/runs", json={"validation_prompt": BIG_PROMPT})
    assert response.status_code == 413
    assert "larger than this server accepts (256 KB; a run config is a few KB)" in response.json()["detail"]
    assert client.get("/api/runs").json()["total"] == 0
    normal = client.post("/api/runs", json={"validation_prompt": "a photo of a cat " * 100})
    assert normal.status_code == 201, normal.text


def test_a_large_form_post_is_refused_with_413(client):
    response = client.post("/runs/new", data={"validation_prompt": BIG_PROMPT})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/plain")
    assert "Request too large" in response.text


@pytest.fixture
def base(tmp_path):
    with live_server(app_settings(tmp_path / "data")) as url:
        yield url


def _exchange(base: str, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` on a raw connection and read the answer (head, body) until the server closes it."""
    address = urlsplit(base)
    # only a server that waits for a body it should refuse gets anywhere near this bound
    with socket.create_connection((address.hostname, address.port), timeout=PATIENCE_S) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_a_declared_length_over_the_bound_is_answered_before_any_body_is_sent(base):
    """The server must not wait for (or read) a body it will refuse: the headers alone get the 413."""
    head, body = _exchange(base, b"POST /api/runs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000000000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert "256 KB" in json.loads(body)["detail"]


CHUNKED = b"POST /api/runs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"


def test_a_chunked_body_is_refused_once_it_passes_the_bound_without_waiting_for_its_end(base):
    """A body one byte over the bound, whose end never comes: the server answers 413 without it."""
    size = MAX_BODY_BYTES + 1
    head, body = _exchange(base, CHUNKED + b"\r\n" + f"{size:x}\r\n".encode() + b"x" * size)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert "256 KB" in json.loads(body)["detail"]
    # one under the bound reaches the app whole, though the middleware read it first
    config = b'{"max_train_steps": 30}'
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (config[:10], config[10:]))
    head, body = _exchange(base, CHUNKED + b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), head + body
    assert json.loads(body)["config"]["max_train_steps"] == 30


def test_reading_stops_once_the_bound_is_passed():
    """Of a chunked body far over the bound, the middleware takes in only what passes the bound."""
    chunk, pulled, sent = b"x" * 1024, [], []

    async def receive():
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}  # a body that never ends

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app was called with a body over the bound")

    scope = {"type": "http", "path": "/api/runs", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, max_bytes=4096)(scope, receive, send))
    assert sum(pulled) == 4096 + 1024  # the chunk that passed the bound, and not one more
    assert sent[0]["status"] == 413
