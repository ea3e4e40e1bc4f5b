"""The body limit over a real socket: a client that sends its whole oversized body before it reads (as urllib and
requests do) gets the 413 and its one-line reason, never a reset connection or a broken pipe."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from kneuron.serve.safety import MAX_BODY, BodyLimit
from kneuron.serve.server import RunningServer


async def _echo_length(scope, receive, send):
    """A bare ASGI app: answers the length of the body it was given."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


@pytest.fixture(scope="module")
def server():
    with RunningServer(BodyLimit(_echo_length)) as running:
        yield running


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url + "/api/probe", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("size", [MAX_BODY + 1, 1_000_000, 10_000_000])
def test_an_oversized_body_sent_in_full_gets_its_413(server, size):
    for _ in range(5):  # the reset was a race; without the fix, 10 MB lost it every time and 1 MB about 1 in 12
        status, answer = _post(server.url, b"x" * size)
        assert status == 413
        assert json.loads(answer)["error"].startswith(f"The request is {size:,} bytes;")


def test_a_body_within_the_limit_reaches_the_app_whole(server):
    assert _post(server.url, b"y" * MAX_BODY) == (200, str(MAX_BODY).encode())


def test_a_chunked_oversized_body_gets_its_413(server):
    """Without a Content-Length the limit is found as the body streams in; the rest is read and dropped."""
    host, port = server.url.removeprefix("http://").split(":")
    chunk = b"z" * 65536
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/probe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for _ in range(40):  # 2.6 MB
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        data = b""
        while part := sock.recv(65536):
            data += part
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.split(b" ", 2)[1] == b"413"
    assert json.loads(body)["error"].startswith(f"The request is over {MAX_BODY:,} bytes;")


def test_a_client_that_waits_for_100_continue_is_refused_before_it_sends(server):
    """``Expect: 100-continue``: the server answers 413 at once and does not invite the body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        data = b""
        while part := sock.recv(65536):
            data += part
    assert data.startswith(b"HTTP/1.1 413"), data[:80]
    assert b"100 Continue" not in data
