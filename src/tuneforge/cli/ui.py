"""`tuneforge ui`: the web dashboard (launch, watch, compare, try and promote runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneforge.cli.common import RegistryOption


def ui(
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on. Anything but loopback needs --token."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
    ] = 7860,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="TUNEFORGE_UI_TOKEN",
            help="Secret every request must carry (open /?token=SECRET once; a cookie keeps it).",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest data file upload, in MB.")
    ] = 50.0,
    registry: RegistryOption = None,
) -> None:
    """Open the web dashboard: runs (live), a run's curves and results, compare, new run (form,
    checks, plan, queue), playground, models and promotion."""
    from tuneforge.ui.app import serve  # deferred: CLI start (fastapi, torch)

    serve(host, port, token, registry, max_upload_mb)
