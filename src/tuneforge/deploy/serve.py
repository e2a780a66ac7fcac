"""`tuneforge serve RUN`: the run behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

The listening socket is bound first, so a port already in use is a clear error at once. The model
then loads in the background while the server already answers: GET /health (alive) at once, GET
/ready (200) once the model is loaded, which is when the API answers. A model that fails to load
stops the server with that error.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path

import uvicorn

from tuneforge.deploy.server import Limits, create_app
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console
from tuneforge.runs import registry
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
    guard_health: bool = False,
    log_level: str = "info",
    feedback_log: Path | None | bool = True,
) -> None:
    """Serve a run until interrupted (Ctrl-C): chat and completions for sft/pretrain runs,
    /v1/classify for classification runs, /v1/models for all, and the probes /health and /ready
    (open without the API key unless `guard_health`); generative runs also record their chat
    completions and POST /v1/feedback in `feedback_log` (True: <run>/feedback/feedback.jsonl,
    False: off)."""
    if api_key is not None and not api_key.strip():
        raise TuneforgeError("--api-key is empty", hint="give a key, or leave the option out")
    if guard_health and not api_key:
        raise TuneforgeError("--guard-health needs --api-key", hint="give a key, or leave it out")
    loaded = run if isinstance(run, Run) else Run.load(run)
    sock = bind(host, port)
    try:
        server, failed = _server(
            loaded, sock, api_key, name, limits, guard_health, log_level, feedback_log
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failed:
        raise failed[0]


def _server(
    run: Run,
    sock: socket.socket,
    api_key: str | None,
    name: str | None,
    limits: Limits | None,
    guard_health: bool,
    log_level: str,
    feedback_log: Path | None | bool = True,
) -> tuple[uvicorn.Server, list[BaseException]]:
    """The uvicorn server, announced; it stops if the model fails to load (the error is put in
    the list it returns)."""
    started, failed = time.monotonic(), []
    server: uvicorn.Server | None = None

    def on_loaded(error: BaseException | None) -> None:
        if error is None:
            console.print(f"Ready: model loaded in {time.monotonic() - started:.1f}s")
        else:
            failed.append(error)
            if server is not None:
                server.should_exit = True

    app = create_app(
        run, name=name, api_key=api_key, limits=limits, guard_health=guard_health,
        on_loaded=on_loaded, feedback_log=feedback_log, model_version=registered_version(run),
    )  # fmt: skip
    os.environ["TUNEFORGE_QUIET"] = "1"  # no progress bars per request in the server's log
    _announce(app.state.service.name, run.meta["task"], sock, api_key, guard_health)
    if app.state.service.feedback is not None:
        console.print(f"Feedback log: {app.state.service.feedback.path}", soft_wrap=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    return server, failed


def _announce(
    name: str, task: str, sock: socket.socket, api_key: str | None, guard_health: bool
) -> None:
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}"
    if not api_key:
        access = "; no API key required"
    elif guard_health:
        access = "; every path needs the API key"
    else:
        access = "; /health and /ready open, the rest needs the API key"
    console.print(
        f"Serving '{name}' ({task}) on {url} (OpenAI base URL {url}/v1){access}; loading the "
        f"model: GET {url}/ready answers 200 once it is loaded",
        highlight=False,
        soft_wrap=True,  # the URL on one line, for people and scripts reading it
    )
    if not api_key and not _loopback(bound_host):
        console.print(
            "[yellow]warning[/yellow]: listening beyond this machine without --api-key: "
            "anyone who can reach the port can use the model"
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def registered_version(run: Run) -> str | None:
    """The newest `name@version` this run is registered as, recorded with each completion and
    judgement so feedback says which version it was about (None: not registered)."""
    try:
        found = [
            m for m in registry.list_models(run.recipe.registry) if m["run_id"] == run.path.name
        ]
    except Exception:  # noqa: BLE001 - an unreadable registry only leaves the version out
        return None
    return f"{found[-1]['name']}@{found[-1]['version']}" if found else None
