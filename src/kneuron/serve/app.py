"""The web app of ``kneuron serve``: pages per relation, fact and neuron over one atlas, and live probes when a
model is loaded.

Every page has a stable address (``/``, ``/relation/capital``, ``/fact/capital%3AFrance``, ``/neuron/L29.N1066``,
``/study/suppress_amplify?variant=kn&metric=suppress``, ``/search?q=France``) and a JSON twin under ``/api``
(``/api/fact/capital%3AFrance``) with the same numbers. The app only reads the atlas (:mod:`.readers`), except
``POST /api/find`` with ``"save": true`` on a server started with ``--allow-save``.

Probes run on the one model through :class:`~kneuron.serve.jobs.ProbeQueue`: one at a time, on one thread,
inside kneuron's patch context managers, with a bounded queue (a full queue answers 503 with a one-line message).

Errors: a bad input or an unknown page answers with a one-line message (a page, or ``{"error": ...}`` under
``/api``), never a traceback; an unexpected error is logged and answered "internal error" in one line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from kneuron.errors import KneuronError
from kneuron.serve import api, jobs, pages
from kneuron.serve.cache import PageCache
from kneuron.serve.readers import AtlasReaders
from kneuron.serve.safety import ASSETS, LOOPBACK_NAMES, BodyLimit, HostCheck

LOG = logging.getLogger("kneuron.serve")
TEMPLATES = Path(__file__).parent / "templates"
#: the HTTP status of each error that is not the user's input (the rest answer 400)
STATUS = {api.NoModel: 409, jobs.QueueFull: 503, jobs.QueueClosed: 503, jobs.JobTimeout: 504, jobs.JobFailed: 500}


def fact_url(fact_id: str) -> str:
    return "/fact/" + quote(fact_id, safe="")


def relation_url(relation: str) -> str:
    return "/relation/" + quote(relation, safe="")


def neuron_url(layer: int, index: int) -> str:
    return "/neuron/" + pages.neuron_name(layer, index)


def study_url(study: str, **filters: Any) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in filters.items() if v not in (None, ""))
    return f"/study/{quote(study, safe='')}" + (f"?{query}" if query else "")


def percent(value: float | None, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def plural(count: int, word: str) -> str:
    """``1 fact``, ``2 facts``."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{digits}g}"


def create_app(atlas: str | Path, *, model=None, queue=None, allow_save: bool = False, title: str | None = None,
               hosts: Iterable[str] = LOOPBACK_NAMES, any_ip: bool = False):
    """The ASGI app over the atlas at ``atlas``: pass ``model`` and its ``queue`` (a
    :class:`~kneuron.serve.jobs.ProbeQueue` that owns the model) for live probes.

    ``hosts``: the host names it answers to (by default the loopback names; :func:`~kneuron.serve.safety.host_names`
    gives those of a server bound to an address), ``any_ip``: also any IP address as ``Host`` (a server listening
    beyond loopback). Any other ``Host``, or an ``Origin`` of another site, gets 403 (:class:`HostCheck`).

    Opening the app reads the atlas's meta only (no scan), so it starts as fast for a large atlas as a small one.

    Raises:
        KneuronError: no atlas at ``atlas``, or not an atlas.
    """
    readers = AtlasReaders(atlas)
    cache = PageCache(readers.path)
    with readers.get().snapshot():
        meta = readers.get().meta
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals.update(fact_url=fact_url, relation_url=relation_url, neuron_url=neuron_url,
                                 study_url=study_url, percent=percent, number=number, plural=plural,
                                 model_loaded=model is not None, allow_save=allow_save,
                                 atlas_name=readers.path.name, model_name=meta.get("model"))
    templates.env.filters.update(percent=percent, number=number)

    app = FastAPI(title=title or f"kneuron: {readers.path.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.readers, app.state.model, app.state.queue, app.state.cache = readers, model, queue, cache
    app.state.allow_save = allow_save

    @app.on_event("shutdown")
    def _close() -> None:  # pragma: no cover - run by uvicorn at exit
        readers.close()

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def refuse(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message},
                                          status_code=status)

    @app.exception_handler(pages.NotFound)
    async def _not_found(request: Request, exc: pages.NotFound) -> Response:
        return refuse(request, 404, str(exc))

    @app.exception_handler(KneuronError)
    async def _bad_input(request: Request, exc: KneuronError) -> Response:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        return refuse(request, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return refuse(request, 422, f"Bad request: {where or 'body'}: {first.get('msg', 'invalid')}.")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else \
            f"No page at {request.url.path!r}: start from the overview at /."
        return refuse(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        LOG.exception("internal error on %s", request.url.path)
        return refuse(request, 500, f"Internal error ({type(exc).__name__}); the server's log has the details.")

    def page(request: Request, template: str, data: dict[str, Any]) -> Response:
        return templates.TemplateResponse(request, template, {"data": data})

    def reader():
        return readers.get()

    # ------------------------------------------------------------------------------------------ pages

    @app.get("/")
    def overview(request: Request) -> Response:
        return page(request, "overview.html", cache.get("overview", lambda: pages.overview(reader())))

    @app.get("/relation/{relation:path}")
    def relation(request: Request, relation: str) -> Response:
        return page(request, "relation.html",
                    cache.get(("relation", relation), lambda: pages.relation_page(reader(), relation)))

    @app.get("/fact/{fact_id:path}")
    def fact(request: Request, fact_id: str) -> Response:
        return page(request, "fact.html", pages.fact_page(reader(), fact_id))

    @app.get("/neuron/{name}")
    def neuron(request: Request, name: str) -> Response:
        layer, index = api.neuron_or_404(name)
        if name != pages.neuron_name(layer, index):
            return RedirectResponse(neuron_url(layer, index), status_code=301)
        return page(request, "neuron.html", pages.neuron_page(reader(), layer, index))

    @app.get("/study/{study}")
    def study(request: Request, study: str, variant: str | None = None, metric: str | None = None,
              relation: str | None = None, fact_id: str | None = None) -> Response:
        filters = {"variant": variant, "metric": metric, "relation": relation, "fact_id": fact_id}
        return page(request, "study.html", pages.study_page(reader(), study, filters))

    @app.get("/search")
    def search(request: Request, q: str = "") -> Response:
        found = pages.search(reader(), q)
        if "redirect" in found:
            return RedirectResponse(found["redirect"], status_code=303)
        return page(request, "search.html", found)

    @app.get("/find")
    def find_page(request: Request) -> Response:
        return page(request, "find.html", {"params": reader().params})

    @app.get("/static/{name:path}")
    def static(name: str) -> Response:
        path = ASSETS.get(name)
        if path is None:
            return JSONResponse({"error": f"No asset {name!r}."}, status_code=404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    api.add_routes(app, reader, cache)
    return BodyLimit(HostCheck(app, hosts, any_ip=any_ip))  # a refused Host's body is read first, as a 413's
