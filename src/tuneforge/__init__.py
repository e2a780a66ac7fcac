"""tuneforge: fine-tune pretrained LLMs on your own data, measured against the base model."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tuneforge.run import Run


def train(recipe, overrides: list[str] | None = None) -> Run:
    """Run a recipe (a path or a :class:`tuneforge.config.Recipe`); returns the finished run."""
    from tuneforge.training import train as _train

    return _train(recipe, overrides)


def load_run(path) -> Run:
    from tuneforge.run import Run

    return Run.load(path)


def load_recipe(path, overrides: list[str] | None = None):
    from tuneforge.config import load_recipe as _load

    return _load(path, overrides)


__all__ = ["__version__", "load_recipe", "load_run", "train"]
