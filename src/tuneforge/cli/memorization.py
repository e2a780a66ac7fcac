"""`eval RUN --memorization`: the audit's options, its tables and its place in `--json`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tuneforge.progress import console, out

Memorization = Annotated[
    bool,
    typer.Option(
        "--memorization",
        help="Audit memorisation (sft, pretrain): greedy reproduction and loss of training vs "
        "held-out examples, planted canaries' exposure, base model beside; memorization.json.",
    ),
]
Samples = Annotated[
    int, typer.Option("--samples", help="--memorization: training (and held-out) examples.")
]
PrefixTokens = Annotated[
    int | None,
    typer.Option(
        "--prefix-tokens",
        help="--memorization: prompt tokens from the example (sft: of the answer, after the "
        "chat; default 0; pretrain: of the document, default 32).",
    ),
]
SuffixTokens = Annotated[
    int, typer.Option("--suffix-tokens", help="--memorization: continuation tokens compared.")
]
Seed = Annotated[int, typer.Option("--seed", help="--memorization: seed of the samples.")]
Candidates = Annotated[
    int,
    typer.Option(
        "--candidates", help="--memorization: random secrets each canary is ranked against."
    ),
]


def with_audit(document: dict[str, Any], audit: dict[str, Any] | None, alone: bool) -> dict:
    """--json: the audit itself with --memorization alone, else under `memorization`."""
    if audit is None:
        return document
    return audit if alone else {**document, "memorization": audit}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def print_memorization(audit: dict[str, Any]) -> None:
    """Base vs tuned, train vs held-out; the canaries; the warnings."""
    s = audit["settings"]
    table = Table(
        title=f"Memorisation audit: {audit['sampled']['train']} train vs "
        f"{audit['sampled']['held_out']} held-out examples, prefix {s['prefix_tokens']} / "
        f"continuation {s['suffix_tokens']} tokens, greedy"
    )
    for col in (
        "model",
        "side",
        "verbatim",
        f"near-verbatim (≥{s['near_verbatim_ratio']})",
        "loss",
    ):
        table.add_column(col)
    table.add_column("loss gap / AUC")
    for who in ("base", "tuned"):
        m = audit.get(who)
        if m is None:
            continue
        for side in ("train", "held_out"):
            r = m[side]
            extra = f"{_num(m['loss_gap'])} / {_num(m['auc'])}" if side == "train" else ""
            table.add_row(
                who if side == "train" else "",
                side.replace("_", "-"),
                _pct(r["verbatim"]),
                _pct(r["near_verbatim"]),
                _num(r["loss"]),
                extra,
            )
    out.print(table)
    if audit["tuned"]["canaries"]:
        canaries = Table(
            title=f"Canaries: exposure among {s['candidates']} random secrets "
            f"(max {audit['tuned']['canaries'][0]['max_exposure']:.2f} bits)"
        )
        for col in ("account", "secret", "base exposure", "tuned exposure", "tuned reproduces"):
            canaries.add_column(col)
        base = audit.get("base", {}).get("canaries", [])
        for k, c in enumerate(audit["tuned"]["canaries"]):
            b = base[k] if k < len(base) else None
            canaries.add_row(
                c["account"],
                c["secret"],
                f"{b['exposure']:.2f}" if b else "—",
                f"{c['exposure']:.2f}",
                "yes" if c["reproduced"] else "no",
            )
        out.print(canaries)
    for warning in audit["warnings"]:
        console.print(f"[yellow]warning[/yellow]: memorisation: {warning}")
