"""`tuneforge serve RUN`: the run behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

The listening socket is bound before the model loads, so a port already in use is a clear error at
once; the model is loaded once, before the first connection is accepted, so a server that answers
/health is ready.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import uvicorn

from tuneforge.deploy.server import Limits, create_app
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console, status
from tuneforge.runs.run import Run

__all__ = ["Limits", "create_app", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TuneforgeError(f"--host: cannot resolve '{host}': {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = "pick another --port, or stop the program using it" if port else None
        raise TuneforgeError(f"cannot listen on {host}:{port}: {e.strerror}", hint=hint) from None
    sock.set_inheritable(True)
    return sock


def serve(
    run: str | Path | Run,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    name: str | None = None,
    limits: Limits | None = None,
    log_level: str = "info",
) -> None:
    """Serve a run until interrupted (Ctrl-C): chat and completions for sft/pretrain runs,
    /v1/classify for classification runs, /health and /v1/models for all."""
    if api_key is not None and not api_key.strip():
        raise TuneforgeError("--api-key is empty", hint="give a key, or leave the option out")
    loaded = run if isinstance(run, Run) else Run.load(run)
    sock = bind(host, port)
    try:
        with status(f"Loading {loaded.path.name} ({loaded.meta['task']})"):
            app = create_app(loaded, name=name, api_key=api_key, limits=limits)
        os.environ["TUNEFORGE_QUIET"] = "1"  # no progress bars per request in the server's log
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        console.print(
            f"Serving '{app.state.service.name}' ({loaded.meta['task']}) on "
            f"http://{shown}:{bound_port} (OpenAI base URL http://{shown}:{bound_port}/v1)"
            + ("" if api_key else "; no API key required"),
            highlight=False,
            soft_wrap=True,  # the URL on one line, for people and scripts reading it
        )
        if not api_key and not _loopback(bound_host):
            console.print(
                "[yellow]warning[/yellow]: listening beyond this machine without --api-key: "
                "anyone who can reach the port can use the model"
            )
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
