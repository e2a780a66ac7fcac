"""Measuring a finished run: eval (metrics, the bias probe) and its report rewritten."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge.cli import memorization as mem
from tuneforge.cli.common import (
    AllowPickle,
    DeviceOption,
    load_run,
    opt_in_to_pickle,
    print_comparison,
)
from tuneforge.cli.output import JsonOption, emit_json
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console, out
from tuneforge.runs import base_scores


def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Labelled file to evaluate on.")
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also measure the untouched base model.")
    ] = False,
    rescore_base: Annotated[
        bool,
        typer.Option(
            "--rescore-base",
            help="With --base: score the base model again, not reading an identical earlier "
            "scoring (kept under the tuneforge home's cache/base-scores).",
        ),
    ] = False,
    as_json: JsonOption = False,
    bias: Annotated[
        bool, typer.Option("--bias", help="Run the counterfactual bias probe (classification).")
    ] = False,
    bias_terms: Annotated[
        Path | None,
        typer.Option("--bias-terms", help="YAML with extra categories/templates for --bias."),
    ] = None,
    generate: Annotated[
        int | None,
        typer.Option(
            "--generate",
            help="Generation metrics (sft) from greedy answers to the first N rows only "
            "(default: every row).",
            min=0,
        ),
    ] = None,
    memorization: mem.Memorization = False,
    samples: mem.Samples = 32,
    prefix_tokens: mem.PrefixTokens = None,
    suffix_tokens: mem.SuffixTokens = 32,
    seed: mem.Seed = 0,
    candidates: mem.Candidates = 1000,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Metrics of a run on a labelled file, with intervals (base model too with --base, and
    whether the difference is significant); --bias probes identity swaps."""
    opt_in_to_pickle(run, allow_pickle)
    if data is None and not bias and not memorization:
        raise TuneforgeError("eval: give --data FILE (and/or --bias, --memorization)")
    if rescore_base and not (base and data is not None):
        raise TuneforgeError("eval: --rescore-base goes with --data FILE --base")
    loaded = load_run(run, device)
    probe = loaded.bias_probe(bias_terms) if bias else None
    if probe is not None:
        console.print(f"Bias probe saved to {loaded.path / 'bias.json'}; report updated")
        if not as_json:
            print_bias(probe)
    audit = None
    if memorization:
        audit = loaded.memorization(
            samples=samples,
            prefix_tokens=prefix_tokens,
            suffix_tokens=suffix_tokens,
            seed=seed,
            candidates=candidates,
        )
        console.print(
            f"Memorisation audit saved to {loaded.path / 'memorization.json'}; report updated"
        )
        if not as_json:
            mem.print_memorization(audit)
    result = (
        loaded.evaluate(data, base=base, generate=generate, rescore_base=rescore_base)
        if data is not None
        else None
    )
    if result is not None and "base_reused" in result:
        console.print(
            escape(base_scores.reuse_message(result["base_reused"], "--rescore-base")),
            highlight=False,
        )
    if as_json:
        emit_json(mem.with_audit(eval_document(result, probe), audit, data is None and not bias))
    elif result is not None:
        print_comparison(
            f"{run} on {data}",
            result.get("base", {}),
            result["tuned"],
            result.get("comparison"),
            loaded.metrics.get("selection_metric"),
            str(data),
        )
        print_intervals(result)


def print_intervals(result: dict) -> None:
    """The tuned model's own intervals, and how many answers the generation metrics scored."""
    tuned, found = result["tuned"], result.get("intervals", {})
    if not found:
        return
    shown = ", ".join(f"{m} {lo:.3f}–{hi:.3f}" for m, (lo, hi) in found.items())
    level = f"{100 * result.get('confidence', 0.95):g}%"
    out.print(f"Fine-tuned, {level} intervals: {shown}", highlight=False, soft_wrap=True)
    if tuned.get("generated") is not None and tuned["generated"] < tuned.get("n", 0):
        out.print(
            f"Generation metrics from the first {tuned['generated']} of {tuned['n']} rows "
            "(--generate); the intervals say how far they may be from all rows'.",
            highlight=False,
        )


def eval_document(result: dict | None, probe: dict | None) -> dict:
    """--json: the tuned metrics at the top level, with `intervals` (each metric's own interval);
    with --base, `base` (the base model's) and `comparison` (each difference with its interval,
    significance and test), and `base_reused` where the base scores were read, not run; with
    --bias as well, the probe under `bias`; with --bias alone, the probe itself."""
    if result is None:
        return probe or {}
    payload = dict(result["tuned"])
    payload["intervals"] = result.get("intervals", {})
    if "base" in result:
        payload["base"] = result["base"]
        payload["comparison"] = result.get("comparison", {})
    if "base_reused" in result:
        payload["base_reused"] = result["base_reused"]
    if probe is not None:
        payload["bias"] = probe
    return payload


def print_bias(probe: dict) -> None:
    table = Table(title="Bias probe: label flip rate under identity swaps (lower is better)")
    for col in (
        "category",
        "base flip rate",
        "tuned flip rate",
        "tuned max prob. shift",
        "worst template (tuned)",
    ):
        table.add_column(col)
    for category, tuned in probe["tuned"]["categories"].items():
        base = probe.get("base", {}).get("categories", {}).get(category, {})
        worst = tuned["worst"][0] if tuned["worst"] else {}
        table.add_row(
            category,
            f"{base['flip_rate']:.2f}" if base else "—",
            f"{tuned['flip_rate']:.2f}",
            f"{tuned['max_abs_shift']:.3f}",
            f"{worst.get('template', '')} ({worst.get('lowest', '')} vs {worst.get('highest', '')})",
        )
    out.print(table)


def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in a browser.")] = False,
) -> None:
    """Regenerate a run's report.md, figures and self-contained report.html."""
    from tuneforge.report import write_report  # deferred: CLI start (matplotlib)

    loaded = load_run(run, None)
    path = write_report(loaded.path)
    console.print(f"Report: {path} (and {loaded.path / 'report.md'})", soft_wrap=True)
    if open_:
        webbrowser.open(path.resolve().as_uri())
