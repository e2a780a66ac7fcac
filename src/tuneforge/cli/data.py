"""`tuneforge data`: look at a recipe's training data before spending compute (preview, check)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from tuneforge.cli.common import SetOption
from tuneforge.cli.output import JsonOption, emit_json
from tuneforge.errors import CheckFailed
from tuneforge.progress import out

if TYPE_CHECKING:
    from tuneforge.tasks.base import Preview

data_app = typer.Typer(no_args_is_help=True, help="Look at training data before spending compute.")

STYLES = {"trained": "bold green", "context": "dim", "special": "bold magenta"}


@data_app.command("preview")
def data_preview(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples.")] = 3,
    set_: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a few training examples as the model sees them, trained tokens highlighted."""
    from tuneforge.preview import preview_recipe  # deferred: CLI start (torch)

    examples = preview_recipe(recipe, set_ or [], n)
    if as_json:
        emit_json({"examples": [preview_record(e) for e in examples]})
        return
    plain = not out.is_terminal  # no colours: mark the trained tokens with ⟦ ⟧ instead
    for example in examples:
        out.rule(example.title)
        text = Text()
        for piece, style in example.pieces:
            if plain and style == "trained":
                piece = f"⟦{piece}⟧"
            text.append(piece, style=STYLES[style])
        out.print(text, soft_wrap=True)  # line breaks only where the data has them
        out.print(f"[dim]{escape(example.note)}[/dim]")
    legend = (
        "⟦trained⟧ (loss on these tokens), the rest is context"
        if plain
        else (
            "[bold green]trained[/bold green] (loss on these tokens), [dim]context[/dim], "
            "[bold magenta]document separator[/bold magenta]"
        )
    )
    out.print(legend)


def preview_record(example: Preview) -> dict[str, Any]:
    """One previewed example for --json: its pieces in order, each trained, context or special."""
    return {
        "title": example.title,
        "note": example.note,
        "pieces": [{"text": text, "kind": kind} for text, kind in example.pieces],
    }


@data_app.command("check")
def data_check(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a recipe's data: counts, balance, duplicates, leakage, lengths, unparseable rows.

    Exit code 1 when a finding is an error (the findings are printed first, --json too)."""
    from tuneforge.config import load_recipe  # deferred: CLI start (pydantic)
    from tuneforge.data.recipe_check import (  # deferred: CLI start (pydantic)
        check_recipe_data,
        findings_table,
        refuse_on_errors,
        summary_table,
    )
    from tuneforge.models import load_tokenizer  # deferred: CLI start (filelock)
    from tuneforge.runs.parents import base_source  # deferred: CLI start (pydantic)
    from tuneforge.tasks import get_task  # deferred: CLI start (torch)

    loaded = load_recipe(recipe, set_ or [])
    source = base_source(loaded.base_model, trust_remote_code=loaded.trust_remote_code)
    tokenizer = load_tokenizer(source.path, trust_remote_code=loaded.trust_remote_code)
    result = check_recipe_data(loaded, tokenizer, get_task(loaded.task), recipe.parent)
    if as_json:
        emit_json({**result.to_dict(), "passed": not result.errors})
    else:
        out.print(summary_table(result))
        out.print(findings_table(result))
    refuse_on_errors(result, CheckFailed)
