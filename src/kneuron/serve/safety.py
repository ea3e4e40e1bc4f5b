"""What the server refuses before any work: a request addressed to another host name or sent from another site's
page (DNS rebinding, cross-site requests), request bodies over a size limit (a 1 MB prompt is refused while it
arrives, not after it was read and parsed), and any path that is not one of its own asset files.

Host names: a web page the user visits can make the browser send requests to ``127.0.0.1:PORT`` under its own
name (DNS rebinding: ``evil.example`` resolves to 127.0.0.1 once the page is loaded), and then read the answers as
its own. Such a request carries ``Host: evil.example``: :class:`HostCheck` answers 403 to any ``Host`` that is not
one of the server's own names (the loopback names ``localhost``, ``127.0.0.1``, ``::1`` and the ``--host`` it was
given; an IP address of this machine when it listens beyond loopback), as Jupyter and other local servers do, and
to any ``Origin`` (sent by browsers with every POST and cross-site fetch) that is not the server's own origin.

Assets are an allowlist: the files under the package's ``static`` folder when the module is imported, by relative
path. A request for anything else (``/static/../../etc/passwd``, an encoded ``%2e%2e%2f``, an absolute path, a
symlink's target) is not looked up on disk at all, so the server cannot serve a file outside its assets.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

#: the largest request body the server reads (a probe's prompt, answer and neurons are far smaller)
MAX_BODY = 64 * 1024
#: how much of a refused body the server reads and drops before it answers 413: a client that sends its whole body
#: before it reads (urllib, requests) would otherwise lose the answer to a reset connection or a broken pipe
DRAIN_LIMIT = 16 * 1024 * 1024

STATIC = Path(__file__).parent / "static"


def asset_files(root: Path = STATIC) -> dict[str, Path]:
    """``{relative path: file}`` of every asset the server may send (regular files only, no symlinks)."""
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink()}


ASSETS = asset_files()


class BodyLimit:
    """ASGI middleware: answer 413 with one JSON line when a request's body exceeds ``limit`` bytes, by its
    Content-Length or, without one, as it streams in.

    Before it answers, it reads and drops the rest of the body (up to ``drain`` bytes in all, never keeping more than
    one chunk), so that the client reads the answer instead of a reset; a client that sent ``Expect: 100-continue``
    has sent nothing yet and is answered at once, as is a body declared larger than ``drain``.
    """

    def __init__(self, app, limit: int = MAX_BODY, drain: int = DRAIN_LIMIT) -> None:
        self.app = app
        self.limit = limit
        self.drain = drain

    def _refusal(self, size: int | None) -> bytes:
        told = f"{size:,} bytes" if size is not None else f"over {self.limit:,} bytes"
        from kneuron.serve.probes import MAX_NEURONS, MAX_PROMPT_CHARS

        return json.dumps({"error": f"The request is {told}; the server accepts at most {self.limit:,}: a probe "
                                    f"takes a prompt of at most {MAX_PROMPT_CHARS:,} characters and at most "
                                    f"{MAX_NEURONS} neurons."}).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        waits_to_send = headers.get(b"expect", b"").lower() == b"100-continue"
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = self.limit + 1
        if size is not None and size > self.limit:
            if not waits_to_send and size <= self.drain:
                await _drop_body(receive, self.drain)
            await _send_json(send, 413, self._refusal(size))
            return
        chunks, seen = [], 0
        while True:  # read the body (at most limit bytes) before the app sees any of it
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                if message.get("more_body", False):
                    await _drop_body(receive, self.drain - seen)
                await _send_json(send, 413, self._refusal(None))
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drop_body(receive, most: int) -> None:
    """Read the rest of a request's body and drop it, up to ``most`` more bytes."""
    dropped = 0
    while dropped <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


#: the names every server answers to: this machine's loopback interface
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: listening on every address: the machine's IP addresses (any IP literal) and its own names are its names
WILDCARDS = ("0.0.0.0", "::", "")


def host_names(bound: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names (lowercase, no port, no brackets) a server listening on ``bound`` answers to: the loopback
    names, ``bound`` itself and ``extra``; a wildcard ``bound`` adds this machine's host name and fully qualified
    name."""
    names = {*LOOPBACK_NAMES, *(normal_host(name) for name in extra)}
    if bound is not None:
        bound = normal_host(bound)
        if bound in WILDCARDS:
            names.update(normal_host(name) for name in (socket.gethostname(), socket.getfqdn()) if name)
        else:
            names.add(bound)
    return frozenset(names)


def normal_host(name: str) -> str:
    """``name`` lowercased, without brackets around an IPv6 address and without the one trailing dot of a fully
    qualified name (``localhost.`` is ``localhost``; ``localhost..`` is no name and stays unmatched)."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") else name


def split_host(header: str) -> tuple[str, str | None] | None:
    """``(host, port)`` of a ``Host`` header value (``127.0.0.1:8000``, ``[::1]:8000``, ``localhost``), None when
    it is not one."""
    try:
        parts = urlsplit(f"//{header}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.password is not None or parts.path or parts.query:
        return None
    return normal_host(host), None if port is None else str(port)


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostCheck:
    """ASGI middleware: answer 403 in one line to a request whose ``Host`` is not one of ``names`` (see
    :func:`host_names`), or whose ``Origin`` is not the server's own (``http://`` + that ``Host``).

    An IP literal is accepted when it is a loopback address, or when the server listens beyond loopback
    (``any_ip``: a wildcard or a non-loopback ``--host``), since a browser sends an IP as ``Host`` only when it
    connected to that IP: no other site's name can stand behind it.
    """

    def __init__(self, app, names: Iterable[str] = LOOPBACK_NAMES, *, any_ip: bool = False) -> None:
        self.app = app
        self.names = frozenset(normal_host(name) for name in names)
        self.any_ip = any_ip

    def allowed_host(self, header: str | None) -> str | None:
        """Why a ``Host`` header is refused, or None when it is one of the server's names."""
        if not header:
            return "a request without a Host header"
        found = split_host(header)
        if found is None:
            return f"the Host {header[:100]!r} is not a host name"
        host = found[0]
        if host in self.names:
            return None
        address = _ip(host)
        if address is not None and (address.is_loopback or self.any_ip):
            return None
        return f"the Host {host[:100]!r} is not one of this server's names ({', '.join(sorted(self.names))})"

    def allowed_origin(self, origin: str | None, host: str) -> str | None:
        """Why an ``Origin`` header is refused (another site's page sent the request), or None."""
        if origin is None:
            return None
        try:
            parts = urlsplit(origin)
            same = parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() and not parts.path
        except ValueError:
            same = False
        return None if same else f"the request comes from another site's page (Origin {origin[:100]!r})"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key.lower(), value.decode("latin-1"))
        why = self.allowed_host(headers.get(b"host"))
        if why is None:
            why = self.allowed_origin(headers.get(b"origin"), headers[b"host"])
        if why is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (f"Refused: {why}. Open the server at its own address (http://localhost:PORT/, or the --host it "
                   "was started with); `kneuron serve --allow-host NAME` adds a name.")
        await _send_json(send, 403, json.dumps({"error": message}).encode())
