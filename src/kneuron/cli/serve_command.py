"""``kneuron serve``: browse an atlas in a web browser (pages per relation, fact and neuron), with live probes when a
model is loaded (:mod:`kneuron.serve`)."""

from __future__ import annotations

from typing import Annotated

import typer

from kneuron.cli.app import DeviceOption, RunOption, atlas_model, command, err_console
from kneuron.errors import KneuronError


@command()
def serve(
    run: RunOption,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", show_default=False,
        help="Load this model for live probes (suppress / amplify a prompt, find a new fact); it must be the "
             "atlas's model. Without it the pages only read the atlas.")] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; only this machine can reach the default. 0.0.0.0 exposes the atlas "
                       "(and the probes) to the network.")] = "127.0.0.1",
    allow_save: Annotated[bool, typer.Option(
        "--allow-save", help="Let the find page add a found fact to the atlas (computed again by `kneuron run`'s "
                             "pipeline with the atlas's settings). Off: the server never writes.")] = False,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", show_default=False,
        help="Also answer requests addressed to this host name (a name of this machine that a browser uses to "
             "reach it; repeatable). Other names are refused, so that another site's page cannot read the atlas "
             "through a name of its own that points here.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Browse an atlas in your web browser: overview, relations, facts, neurons; live probes with --model.

    Read-only on the atlas (also while a run writes it), unless --allow-save. Stop it with Ctrl-C."""
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise KneuronError(f"`kneuron serve` needs the web packages ({exc.name} is missing): pip install "
                           "'kneuron[serve]'.") from None
    from kneuron.serve.server import bind, serve_atlas
    from kneuron.store import Atlas

    sock = bind(host, port)  # a taken port is refused before the model loads; this socket is the one served
    try:
        lm = None
        if model is not None:
            with Atlas.open(run, read_only=True, check=False) as atlas, atlas.snapshot():
                lm = atlas_model(atlas, model, device)
    except BaseException:
        sock.close()
        raise
    serve_atlas(run, model=lm, host=host, port=port, sock=sock, allow_save=allow_save, allow_hosts=allow_host or (),
                say=lambda text: err_console.print(text, highlight=False, soft_wrap=True))
