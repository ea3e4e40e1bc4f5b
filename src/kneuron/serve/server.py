"""Running the app: bind a socket (refusing a taken port in one line), serve it with uvicorn, and stop cleanly.

:func:`serve_atlas` is what ``kneuron serve`` runs in the foreground; :class:`RunningServer` runs the same server on
a background thread (tests, notebooks): ``with RunningServer(app) as server: requests to server.url``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from kneuron.errors import KneuronError

#: the server's request threads (FastAPI runs each page's reads on one): also the most atlas connections it opens
THREADS = 40


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one).

    Raises:
        KneuronError: the port is taken or the host is not this machine's.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise KneuronError(f"Cannot serve on host {host!r} ({exc.strerror}); give --host 127.0.0.1.") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise KneuronError(f"Cannot listen on {host} ({exc.strerror}): it is not an address of this machine; "
                               "give --host 127.0.0.1 (this machine only) or one of its own addresses.") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise KneuronError(f"Cannot listen on {host}:{port} ({exc.strerror}): ports below 1024 need "
                               "privileges; give another --port.") from None
        if exc.errno == errno.EADDRINUSE:
            raise KneuronError(f"Cannot listen on {host}:{port} ({exc.strerror}): another program uses it; give "
                               "another --port.") from None
        raise KneuronError(f"Cannot listen on {host}:{port} ({exc.strerror}).") from None
    sock.listen(2048)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class RunningServer:
    """The app served by uvicorn on a background thread, on ``host`` and a free port unless given.

    ``url`` is its address once started; leaving the block (or :meth:`stop`) shuts it down and waits for it.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.socket = bind(host, port)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                limit_concurrency=None, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="kneuron-serve", daemon=True)

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise KneuronError("The web server did not start; its log says why.")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        self.socket.close()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_atlas(path: str | Path, *, model=None, host: str = "127.0.0.1", port: int = 8000,
                sock: socket.socket | None = None, allow_save: bool = False, say=print,
                log_level: str = "info", allow_hosts: Iterable[str] = ()) -> None:
    """Serve the atlas at ``path`` until interrupted (Ctrl-C); with ``model``, live probes run on it through one
    :class:`~kneuron.serve.jobs.ProbeQueue`, closed at exit. ``sock``: a socket :func:`bind` already made for
    ``host:port`` (``kneuron serve`` binds before it loads the model), else it is bound here; closed at exit.

    The server answers only requests addressed to its own names (:func:`~kneuron.serve.safety.host_names` of
    ``host``, plus ``allow_hosts``) and not sent by another site's page (:class:`~kneuron.serve.safety.HostCheck`)."""
    import anyio.to_thread
    import uvicorn

    from kneuron.serve.app import create_app

    sock = sock if sock is not None else bind(host, port)  # before any work: a taken port is refused at once
    queue = None
    try:
        if model is not None:
            from kneuron.serve.jobs import ProbeQueue

            queue = ProbeQueue(model)
        from kneuron.serve.safety import host_names

        app = create_app(path, model=model, queue=queue, allow_save=allow_save,
                         hosts=host_names(host, allow_hosts), any_ip=not is_loopback(host))
        url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/"
        say(f"kneuron serve: {Path(path)} at {url}" + (f" with live probes on {model.name}" if model else
                                                          " (no model: pages only; --model enables probes)"))
        if not is_loopback(host):
            say(f"warning: {host} is reachable from other machines: anyone who reaches it can read this atlas"
                + (" and run probes on the model." if model else "."))
        config = uvicorn.Config(app, log_level=log_level, lifespan="on")
        server = uvicorn.Server(config)

        async def limited() -> None:  # the thread pool that runs the pages, and so the atlas connections
            anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
            await server.serve(sockets=[sock])

        with contextlib.suppress(KeyboardInterrupt):  # uvicorn shut down cleanly, then re-raised the Ctrl-C
            anyio.run(limited)
        say("kneuron serve: stopped")
    finally:
        if queue is not None:
            queue.close()
        sock.close()
