"""``kneuron serve``: a local web app over an atlas, with a page per relation, fact and neuron, and live probes.

Layers: :mod:`.pages` (what each page shows, read from the atlas in one snapshot), :mod:`.probes` (suppress /
amplify a prompt, find a new fact, on a loaded model), :mod:`.jobs` (one probe at a time, a bounded queue),
:mod:`.app` and :mod:`.api` (the FastAPI routes and templates), :mod:`.safety` (body limit, asset allowlist),
:mod:`.readers` (per-thread read-only connections), :mod:`.cache` (whole-atlas pages once per atlas state) and
:mod:`.server` (uvicorn, a port refused in one line).

Example:
    >>> from kneuron.serve.app import create_app
    >>> from kneuron.serve.server import RunningServer
    >>> with RunningServer(create_app("runs/demo.sqlite")) as server:
    ...     print(server.url)          # http://127.0.0.1:PORT, pages only (no model)
"""
