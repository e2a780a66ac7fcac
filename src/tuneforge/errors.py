"""The one exception type for problems the user can fix.

Anything raised as :class:`TuneforgeError` is shown by the CLI as a single message (no traceback)
with exit code 2; a :class:`CheckFailed` (a check or gate that ran and said no) likewise, with exit
code 1. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TuneforgeError(Exception):
    """A bad recipe, data file, model name or request: the message says what, where and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class CheckFailed(TuneforgeError):
    """A check that ran to the end and failed: a data check with errors, a refused promotion, a
    plan that does not fit. Exit code 1, so a script can tell "no" from "asked wrongly" (2)."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
