"""The JSON routes of ``kneuron serve`` (under ``/api``): each page's numbers, a prompt's layers x neurons cells,
and the live probes (suppress / amplify a prompt, find a new fact's neurons, what a neuron writes).

Probes need a model (``kneuron serve --model``); without one they answer 409 with a one-line message. Each probe
is a job of the server's :class:`~kneuron.serve.jobs.ProbeQueue`: ``POST /api/probe`` waits for its result,
``POST /api/find`` answers at once with a job id, and ``GET /api/jobs/{id}`` tells its progress and result.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, Request
from fastapi.responses import JSONResponse

from kneuron.errors import KneuronError, NoModel
from kneuron.serve import pages, probes

#: the most tokens a vocabulary projection lists
MAX_TOP = 20
#: seconds a synchronous probe waits for its turn and its run before the request gives up (the probe still ends)
PROBE_TIMEOUT = 300.0


def neuron_or_404(name: str) -> tuple[int, int]:
    found = pages.parse_neuron_name(name)
    if found is None:
        raise pages.NotFound(f"{name!r} is not a neuron name; write a neuron as L<layer>.N<index>, e.g. L29.N1066.")
    return found


def add_routes(app, reader, cache) -> None:
    """Register the JSON routes on ``app``; ``reader()`` gives this thread's atlas connection, ``cache`` is the
    app's :class:`~kneuron.serve.cache.PageCache`."""
    def queue_of(request: Request):
        queue = request.app.state.queue
        if queue is None or request.app.state.model is None:
            raise NoModel("No model is loaded: restart with `kneuron serve --run ATLAS --model MODEL` to probe.")
        return queue

    @app.get("/api/overview")
    def overview() -> dict[str, Any]:
        return cache.get("overview", lambda: pages.overview(reader()))

    @app.get("/api/relation/{relation:path}")
    def relation(relation: str) -> dict[str, Any]:
        return cache.get(("relation", relation), lambda: pages.relation_page(reader(), relation))

    @app.get("/api/fact/{fact_id:path}/prompt/{idx}/cells")
    def cells(fact_id: str, idx: int) -> dict[str, Any]:
        return pages.prompt_cells(reader(), fact_id, idx)

    @app.get("/api/fact/{fact_id:path}")
    def fact(fact_id: str) -> dict[str, Any]:
        return pages.fact_page(reader(), fact_id)

    @app.get("/api/neuron/{name}")
    def neuron(name: str) -> dict[str, Any]:
        return pages.neuron_page(reader(), *neuron_or_404(name))

    @app.get("/api/study/{study}")
    def study(study: str, variant: str | None = None, metric: str | None = None, relation: str | None = None,
              fact_id: str | None = None) -> dict[str, Any]:
        filters = {"variant": variant, "metric": metric, "relation": relation, "fact_id": fact_id}
        return pages.study_page(reader(), study, filters)

    @app.get("/api/search")
    def search(q: str = "") -> dict[str, Any]:
        return pages.search(reader(), q)

    @app.get("/api/health")
    def health(request: Request) -> dict[str, Any]:
        queue = request.app.state.queue
        return {"atlas": str(request.app.state.readers.path), "model": getattr(request.app.state.model, "name", None),
                "connections": request.app.state.readers.connections,
                "queue": None if queue is None else {"pending": queue.pending(), "max_pending": queue.max_pending}}

    # ------------------------------------------------------------------------------------------ probes

    @app.post("/api/probe")
    def probe(request: Request, payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
        queue = queue_of(request)
        lm = request.app.state.model
        prompt = probes.check_prompt(_text(payload, "prompt"))
        answer = probes.check_answer(_text(payload, "answer"))
        neurons = probes.parse_neurons(payload.get("neurons") or "", lm)
        factor = _factor(payload.get("factor", 2.0))
        return queue.run("probe", lambda job: probes.probe(job.lm, prompt, answer, neurons, factor=factor),
                         timeout=PROBE_TIMEOUT)

    @app.post("/api/find")
    def find(request: Request, payload: dict[str, Any] = Body(...)) -> JSONResponse:
        queue = queue_of(request)
        lm = request.app.state.model
        texts = payload.get("prompts")
        if isinstance(texts, str):
            texts = [t for t in texts.splitlines() if t.strip()]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise probes.ProbeInputError("Give one prompt or more (one per line) to find the neurons of.")
        if len(texts) > probes.MAX_FIND_PROMPTS:
            raise probes.ProbeInputError(f"{len(texts)} prompts given; a find takes at most "
                                         f"{probes.MAX_FIND_PROMPTS}.")
        prompts = [probes.check_prompt(t) for t in texts]
        answer = probes.check_answer(_text(payload, "answer"))
        save = bool(payload.get("save"))
        fact = None
        if save:
            if not request.app.state.allow_save:
                raise KneuronError("This server does not write to its atlas: restart it with --allow-save to save "
                                   "found facts.")
            fact = fact_to_save(payload, prompts, answer, lm.kind)
        params = reader().params
        path = request.app.state.readers.path

        def work(job):
            found = probes.find(job.lm, prompts, answer, params, on_prompt=job.set_progress)
            if fact is not None:
                found["saved"] = probes.save_found(path, job.lm, fact)
            return found

        job = queue.submit("find", work)
        job.set_progress(0, len(prompts))
        return JSONResponse({"job": job.id, "status": job.status}, status_code=202)

    @app.get("/api/jobs/{job_id}")
    def job(request: Request, job_id: str) -> dict[str, Any]:
        found = queue_of(request).get(job_id)
        if found is None:
            raise pages.NotFound(f"No job {job_id!r}: it finished long ago (the server keeps the latest ones) or "
                                 "never existed.")
        return found.as_dict()

    @app.get("/api/neuron/{name}/vocabulary")
    def vocabulary(request: Request, name: str, top: int = 10, sign: float = 1.0) -> dict[str, Any]:
        queue = queue_of(request)
        lm = request.app.state.model
        layer, index = neuron_or_404(name)
        lm.check_neuron(layer, index)
        if not 1 <= top <= MAX_TOP:
            raise probes.ProbeInputError(f"top must be between 1 and {MAX_TOP}.")
        return queue.run("vocabulary", lambda job: neuron_writes(job.lm, layer, index, top=top,
                                                                 sign=-1.0 if sign < 0 else 1.0),
                         timeout=PROBE_TIMEOUT)


def neuron_writes(lm, layer: int, index: int, *, top: int = 10, sign: float = 1.0) -> dict[str, Any]:
    """The tokens the neuron's value slot (times ``sign``, its activation's) promotes and lowers most, projected
    onto the vocabulary through the final norm and output head (:func:`kneuron.interventions.neuron_vocabulary`);
    for an atlas without the vocabulary study."""
    from kneuron.interventions.vocabulary import neuron_vocabulary, token_text

    found = neuron_vocabulary(lm, [(layer, index)], [sign], top=top)[0]
    return {"name": pages.neuron_name(layer, index), "sign": found.sign,
            "promoted": [[t, token_text(lm, t), x] for t, x in found.promoted],
            "suppressed": [[t, token_text(lm, t), x] for t, x in found.suppressed]}


def fact_to_save(payload: dict[str, Any], prompts: list[str], answer: str, kind: str):
    """The fact a find saves: the page's ``subject`` and ``relation``, its prompts made templates (the subject
    becomes [X]; a causal prompt gets " [Y]" at its end, a masked one has its [Y] already)."""
    subject = probes.check_answer(_text(payload, "subject"), "subject")
    relation = probes.check_answer(_text(payload, "relation"), "relation name")
    templates = []
    for number, prompt in enumerate(prompts, 1):
        if subject not in prompt:
            raise probes.ProbeInputError(f"Prompt {number} does not contain the subject {subject!r}: a saved fact's "
                                         "prompts name their subject.")
        template = prompt.replace(subject, "[X]")
        templates.append(template if "[Y]" in template or kind != "causal" else template.rstrip() + " [Y]")
    return probes.fact_from_probe(subject, relation, answer, templates)


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise probes.ProbeInputError(f"Give the {key} as text.")
    return value


def _factor(value: Any) -> float:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise probes.ProbeInputError(f"The amplification factor {value!r} is not a number.") from None
    if not 0 < factor <= 100:
        raise probes.ProbeInputError(f"The amplification factor must be above 0 and at most 100, not {factor:g}.")
    return factor
