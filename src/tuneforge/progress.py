"""Progress display: one rich console for the whole package, on stderr.

Live bars and spinners only where someone watches them: on a terminal (stderr is a TTY), or where
``TUNEFORGE_PROGRESS=1`` forces them (``0`` turns them off; the CLI's ``--progress`` /
``--no-progress`` set it; unset means auto). Elsewhere (a pipe, a CI log) each phase is one plain
line with its timing, and long loops add a line at most every :data:`LINE_EVERY_S` seconds: no
carriage-return updates. ``TUNEFORGE_QUIET=1`` (the server, the ranks of a multi-process run other
than 0, the tests) shows no bars and no progress lines; a phase's closing line still shows.

The libraries' own tqdm bars (datasets tokenizing, transformers loading weights) follow the same
choice: :func:`sync_library_bars`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ENV_PROGRESS = "TUNEFORGE_PROGRESS"  # "1" forces bars, "0" turns them off, unset: auto
LINE_EVERY_S = 30.0  # without bars, a long loop says where it is at most this often

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)  # results for the user go to stdout
_forced_console: Console | None = None  # draws bars into a pipe when TUNEFORGE_PROGRESS=1


def quiet() -> bool:
    return os.environ.get("TUNEFORGE_QUIET", "0") == "1"


def bars_enabled() -> bool:
    """Whether progress shows as live bars and spinners (else as plain lines).

    Quiet wins over a forced ``TUNEFORGE_PROGRESS=1``: the ranks other than 0 inherit that
    variable and must stay silent.
    """
    if quiet():
        return False
    forced = os.environ.get(ENV_PROGRESS, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def say(text: str) -> None:
    """One line on stderr (rich markup), never wrapped: a terminal wraps it itself, and a log
    keeps it whole for grep."""
    console.print(text, soft_wrap=True)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def _live_console() -> Console:
    """The console that draws live displays: the shared one on a terminal; one forced to draw
    when ``TUNEFORGE_PROGRESS=1`` asks for bars in a pipe. Either way other output printed
    meanwhile (through `console` or to stderr) goes above the bar."""
    global _forced_console
    if console.is_terminal:
        return console
    if _forced_console is None:
        _forced_console = Console(stderr=True, highlight=False, force_terminal=True)
    return _forced_console


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A phase of work without a known length (model loading): a spinner with elapsed time on a
    terminal; elsewhere one line once it is done, with the time it took."""
    start = time.perf_counter()
    if not bars_enabled():
        yield
        say(f"{escape(message)} … done in {seconds(time.perf_counter() - start)}")
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=_live_console(),
        transient=True,
    ) as p:
        p.add_task(escape(message), total=None)
        yield
    say(f"[green]✓[/green] {escape(message)} ({seconds(time.perf_counter() - start)})")


def track(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """A counted loop: a bar with count, elapsed time and ETA on a terminal; elsewhere a line at
    most every :data:`LINE_EVERY_S` seconds and one at the end."""
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    with Meter(description, n) as meter:
        for item in items:
            yield item
            meter.advance()


class Meter:
    """Progress of counted work (a loop, the Trainer's steps), shown as :func:`bars_enabled` says:
    a live bar, or plain lines ("training … epoch 1/2 step 25/50 loss 0.41 (37 s)") at most every
    `every` seconds and one when closed ("… done in 75.2 s"); nothing when quiet.

    `detail` is what a line or the bar says besides the count.
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        every: float = LINE_EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.description, self.total = description, total
        self.every, self.clock = every, clock
        self.completed, self.detail = 0, ""
        self.started = self.last_line = 0.0
        self._bar: Progress | None = None
        self._task: Any = None
        self._open = False

    def __enter__(self) -> Meter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.started = self.last_line = self.clock()
        self._open = not quiet()
        if self._open and bars_enabled():
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=_live_console(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(escape(self.description), total=self.total, detail="")
            atexit.register(self.close)  # Ctrl-C in training: the terminal gets its cursor back

    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    def update(self, completed: int, detail: str | None = None) -> None:
        self.completed = completed
        if detail is not None:
            self.detail = detail
        if not self._open:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, detail=escape(self.detail))
            return
        now = self.clock()
        if now - self.last_line >= self.every:
            self.last_line = now
            say(f"{self._line()} ({now - self.started:.0f} s)")

    def close(self) -> None:
        """The closing line (or the bar's last state); a second call does nothing."""
        if not self._open:
            return
        self._open = False
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, detail=escape(self.detail))
            self._bar.stop()
            self._bar = None
            atexit.unregister(self.close)
            return
        say(f"{self._line()} done in {seconds(self.clock() - self.started)}")

    def _line(self) -> str:
        count = f"{self.completed}/{self.total}" if self.total is not None else str(self.completed)
        return f"{escape(self.description)} … {escape(self.detail) or count}"


# The libraries' own bars. Each is switched through its own API once the library is imported; a
# library not imported yet reads the environment variable set here. A variable the user set
# keeps its say (the libraries give it priority and warn when code disagrees).
_LIBRARY_BAR_VARIABLES = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
# Which of them tuneforge set (not the user): kept in the environment too, so a child process
# (a CLI run started by a Python program or a test that used tuneforge) does not mistake a
# variable its parent's tuneforge set for the user's choice.
_SET_BY_TUNEFORGE = "TUNEFORGE_SET_BAR_VARIABLES"


def _set_here() -> set[str]:
    return set(filter(None, os.environ.get(_SET_BY_TUNEFORGE, "").split(",")))


def _remember(found: set[str]) -> None:
    os.environ[_SET_BY_TUNEFORGE] = ",".join(sorted(found))


def sync_library_bars() -> None:
    """datasets' (tokenizing), transformers' (loading weights, writing shards) and the Hub's
    (downloads) tqdm bars on exactly when :func:`bars_enabled`; call before work that shows them."""
    on = bars_enabled()
    ours = _set_here()
    for variable in _LIBRARY_BAR_VARIABLES:
        if variable in os.environ and variable not in ours:
            continue  # the user's
        if on:
            os.environ.pop(variable, None)
            ours.discard(variable)
        else:
            os.environ[variable] = "1"
            ours.add(variable)
    _remember(ours)
    if "datasets" in sys.modules:
        _sync_datasets(on)
    if "huggingface_hub" in sys.modules:
        _sync_hub(on)
    if "transformers" in sys.modules:
        _sync_transformers(on)


def _sync_datasets(on: bool) -> None:
    import datasets  # deferred: only once the caller's work has imported it

    if datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None:
        return  # the variable was set when datasets was imported and has priority
    (datasets.enable_progress_bars if on else datasets.disable_progress_bars)()


def _sync_hub(on: bool) -> None:
    from huggingface_hub import constants  # deferred: only once the caller's work has imported it
    from huggingface_hub.utils import (  # deferred: as above
        disable_progress_bars,
        enable_progress_bars,
    )

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None:
        return  # as for datasets
    (enable_progress_bars if on else disable_progress_bars)()


def _sync_transformers(on: bool) -> None:
    from transformers.utils import logging as hf_logging  # deferred: as above

    (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
