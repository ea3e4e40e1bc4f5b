"""What the server refuses before any work: request bodies over a size limit (a 1 MB prompt is refused while it
arrives, not after it was read and parsed), and any path that is not one of its own asset files.

Assets are an allowlist: the files under the package's ``static`` folder when the module is imported, by relative
path. A request for anything else (``/static/../../etc/passwd``, an encoded ``%2e%2e%2f``, an absolute path, a
symlink's target) is not looked up on disk at all, so the server cannot serve a file outside its assets.
"""

from __future__ import annotations

import json
from pathlib import Path

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
        return json.dumps({"error": f"The request is {told}; the server accepts at most {self.limit:,} "
                                    "(a prompt may have at most 2,000 characters)."}).encode()

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
