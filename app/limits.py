"""A bound on the size of a request's body, so a client cannot make the server read, parse and store
megabytes: a run config is a few KB, and nothing this server accepts is larger.

An ASGI middleware rather than a check per route: a route added later is bounded without anyone
remembering to. A declared ``Content-Length`` over the limit is answered 413 before any byte of the
body is read; a chunked body (no ``Content-Length``) is read into memory up to the limit and refused
as soon as it passes it, so the server never holds more than the limit.
"""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 256 * 1024


def too_large_message(limit: int = MAX_BODY_BYTES) -> str:
    return (f"the request body is larger than this server accepts ({limit // 1024} KB; a run config is a few KB): "
            "send the config alone, and keep long texts such as the validation prompt short")


class BodyLimit:
    """Answers 413 to any request whose body is larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            # the HTTP server holds the body to exactly this length, so the number alone decides
            if declared.strip().isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:  # no body at all (a GET, an SSE stream)
            await self.app(scope, receive, send)
            return
        body, messages = 0, []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees that as it would have
            body += len(message.get("body", b""))
            if body > self.max_bytes:
                await self._refuse(scope, send)  # stop reading here: the rest is never taken in
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(messages, receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = too_large_message(self.max_bytes)
        if scope["path"].startswith("/api/"):
            body, kind = json.dumps({"detail": message}).encode(), b"application/json"
        else:  # a page's form: the words themselves (a browser shows text, not JSON)
            body, kind = f"Request too large: {message}.\n".encode(), b"text/plain; charset=utf-8"
        # close: the unread rest of the body must not be taken for the next request on this connection
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out the messages already read, then the client's own (its disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
