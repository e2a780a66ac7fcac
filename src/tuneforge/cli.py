"""Command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge.deploy.limits import Limits
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console, out

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pretrained LLMs on your own data and measure the gain over the base model.",
)

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe field: --set training.epochs=1")
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Load pickle weights (*.bin, *.pt, *.pth, *.ckpt) when there are no safetensors; "
        "unpickling can run code: only for files you trust.",
    ),
]


DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the model runs: auto (the CUDA GPU when there is one, else the CPU), cpu, "
        "cuda or cuda:N. Default: the run recipe's `device` (auto).",
    ),
]


def _load_run(run: Path, device: str | None):
    from tuneforge.runs.run import Run

    return Run.load(run, device=device)


def _allow_pickle(run: Path | None, allowed: bool) -> None:
    """Opt in to pickle weights for this command; a run's own adapter/model folders are checked."""
    from tuneforge import safety

    safety.allow_pickle(allowed)
    if run is not None and run.is_dir():
        safety.check_run(run)


@app.command()
def train(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML file.")] = None,
    set_: SetOption = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted run from its last checkpoint."),
    ] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Fine-tune a base model as the recipe describes; prints base vs fine-tuned at the end."""
    from tuneforge.runs.run import Run
    from tuneforge.training.job import train as run_training

    if (recipe is None) == (resume is None):
        raise TuneforgeError("train: give a recipe file, or --resume RUN (one of them)")
    overrides = [*(set_ or []), *(["allow_pickle=true"] if allow_pickle else [])]
    run: Run | None = run_training(recipe, overrides, resume=resume)
    if run is not None:  # None on ranks other than 0 of a distributed run: rank 0 reports
        print_summary(run)


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    auto_batch_size: Annotated[
        bool,
        typer.Option(
            "--auto-batch-size",
            help="Pick the largest batch size that fits the budget (by the estimate).",
        ),
    ] = False,
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget", min=0.01, help="Memory budget in GB (default: available RAM)."
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", min=1, max=50, help="Training steps timed (after 1 warm-up).")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Before training: parameters, data size, estimated peak memory, measured time per epoch, fit."""
    from tuneforge.planning import describe
    from tuneforge.planning import plan as make_plan

    result = make_plan(
        recipe,
        set_ or [],
        auto_batch_size=auto_batch_size,
        memory_budget_gb=memory_budget,
        steps=steps,
    )
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    for line in describe(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="CSV/JSONL/Parquet file of inputs.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write predictions as JSONL.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of a table.")
    ] = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Predict with a fine-tuned run: texts on the command line or a whole file."""
    from tuneforge.deploy.predict import predict_file, predict_texts

    _allow_pickle(run, allow_pickle)
    if bool(texts) == bool(input):
        raise TuneforgeError(
            "predict: give texts on the command line or --input FILE (one of them)"
        )
    loaded = _load_run(run, device)
    if input is not None:
        target = output or input.with_suffix(".predictions.jsonl")
        n = predict_file(loaded, input, target)
        console.print(f"Wrote {n} predictions to {target}")
        return
    results = predict_texts(loaded, texts or [])
    if as_json:
        for text, r in zip(texts or [], results, strict=True):
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        return
    for text, r in zip(texts or [], results, strict=True):
        if "completion" in r:
            out.print(f"[dim]{escape(text[:80])} →[/dim]")
            out.print(r["completion"], markup=False)
            continue
        probs = ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
        )
        out.print(f"[bold]{r['label']}[/bold]  ({probs})  ← {text[:80]}")


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Labelled file to evaluate on.")
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also measure the untouched base model.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    bias: Annotated[
        bool, typer.Option("--bias", help="Run the counterfactual bias probe (classification).")
    ] = False,
    bias_terms: Annotated[
        Path | None,
        typer.Option("--bias-terms", help="YAML with extra categories/templates for --bias."),
    ] = None,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Metrics of a run on a labelled file (base model too with --base); --bias probes identity swaps."""
    _allow_pickle(run, allow_pickle)
    if data is None and not bias:
        raise TuneforgeError("eval: give --data FILE (and/or --bias)")
    loaded = _load_run(run, device)
    if bias:
        probe = loaded.bias_probe(bias_terms)
        if as_json and data is None:
            print(json.dumps(probe, ensure_ascii=False))
            return
        _print_bias(probe)
        console.print(f"Bias probe saved to {loaded.path / 'bias.json'}; report updated")
        if data is None:
            return
    result = loaded.evaluate(data, base=base)
    if as_json:
        payload = dict(result["tuned"])
        if base:
            payload = {**payload, "base": result["base"]}
        print(json.dumps(payload, ensure_ascii=False))
        return
    _print_comparison(f"{run} on {data}", result.get("base", {}), result["tuned"])


MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", min=1, max=8192, help="Longest answer.")
]
Temperature = Annotated[
    float,
    typer.Option("--temperature", min=0.0, max=5.0, help="0 = greedy (reproducible); > 0 samples."),
]
TopP = Annotated[
    float,
    typer.Option(
        "--top-p", min=0.01, max=1.0, help="Nucleus sampling mass (with temperature > 0)."
    ),
]


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="Run directory (sft or pretrain).")],
    prompt: Annotated[
        str, typer.Argument(help="The prompt (sft: one user message; pretrain: text to continue).")
    ],
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    device: DeviceOption = None,
) -> None:
    """Answer one prompt with a fine-tuned generative run."""
    if not prompt.strip():
        raise TuneforgeError("generate: the prompt is empty")
    loaded = _load_run(run, device)
    print(
        loaded.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    )


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="Run directory (sft).")],
    system: Annotated[
        str | None, typer.Option("--system", help="System message for the conversation.")
    ] = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    device: DeviceOption = None,
) -> None:
    """Talk to a fine-tuned run: one message per line on stdin; /reset starts over, /exit or EOF ends."""
    loaded = _load_run(run, device)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    console.print(f"Chatting with {run} (/reset starts over, /exit or Ctrl-D ends)")
    while True:
        console.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = loaded.chat(
            messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
        )
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    format: Annotated[str, typer.Option("--format", "-f", help="adapter | merged | gguf.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to create (model, README.md).")
    ],
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="GGUF tensor type: f32 | f16 | q8_0 (default q8_0)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier export at --output.")
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify", help="Skip loading the export back to compare it with the run."
        ),
    ] = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Export a run: its LoRA adapter, merged safetensors, or GGUF for llama.cpp/Ollama; with a model card."""
    from tuneforge.deploy.export import describe, export_run

    _allow_pickle(run, allow_pickle)
    result = export_run(
        _load_run(run, device), format, output, quant=quant, force=force, verify=not no_verify
    )
    for line in describe(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


SERVE_LIMITS = Limits()
LIMITS_PANEL = "Request limits"


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: all interfaces).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TUNEFORGE_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every request.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Model id for clients (default: the run's folder).")
    ] = None,
    allow_pickle: AllowPickle = False,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            min=1, help="Largest request body in bytes (413 past it).", rich_help_panel=LIMITS_PANEL
        ),
    ] = SERVE_LIMITS.max_body_bytes,
    max_texts: Annotated[
        int,
        typer.Option(min=1, help="Texts in one /v1/classify call.", rich_help_panel=LIMITS_PANEL),
    ] = SERVE_LIMITS.max_texts,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Longest prompt in tokens, chat template included.",
            show_default="the model's context",
            rich_help_panel=LIMITS_PANEL,
        ),
    ] = SERVE_LIMITS.max_prompt_tokens,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=1, help="Largest max_tokens a request may ask for.", rich_help_panel=LIMITS_PANEL
        ),
    ] = SERVE_LIMITS.max_tokens,
    default_max_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            help="Tokens generated when a request gives no max_tokens.",
            rich_help_panel=LIMITS_PANEL,
        ),
    ] = SERVE_LIMITS.default_max_tokens,
    max_waiting: Annotated[
        int,
        typer.Option(
            min=1,
            help="Generation requests that may wait for the model (one generates at a time); 503 past it.",
            rich_help_panel=LIMITS_PANEL,
        ),
    ] = SERVE_LIMITS.max_waiting,
    device: DeviceOption = None,
) -> None:
    """Serve a run over an OpenAI-compatible HTTP API (chat, completions; /v1/classify)."""
    _allow_pickle(run, allow_pickle)
    from dataclasses import replace

    from tuneforge.deploy.serve import serve as serve_run

    limits = replace(
        SERVE_LIMITS,
        max_body_bytes=max_body_bytes,
        max_texts=max_texts,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        max_waiting=max_waiting,
    )
    serve_run(
        _load_run(run, device), host=host, port=port, api_key=api_key, name=name, limits=limits
    )


data_app = typer.Typer(no_args_is_help=True, help="Look at training data before spending compute.")
app.add_typer(data_app, name="data")

STYLES = {"trained": "bold green", "context": "dim", "special": "bold magenta"}


@data_app.command("preview")
def data_preview(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples.")] = 3,
    set_: SetOption = None,
) -> None:
    """Print a few training examples as the model sees them, trained tokens highlighted."""
    from rich.text import Text

    from tuneforge.preview import preview_recipe

    plain = not out.is_terminal  # no colours: mark the trained tokens with ⟦ ⟧ instead
    for example in preview_recipe(recipe, set_ or [], n):
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


models_app = typer.Typer(help="Base models available offline; named fine-tuned model versions.")
app.add_typer(models_app, name="models")
runs_app = typer.Typer(
    no_args_is_help=True, help="The run registry: list, show, compare, remove runs."
)
app.add_typer(runs_app, name="runs")
RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Registry file (default: $TUNEFORGE_REGISTRY or ~/.cache/tuneforge/registry.sqlite).",
    ),
]


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, registry: RegistryOption = None) -> None:
    """List the base models available on this machine without a network (and registered models)."""
    if ctx.invoked_subcommand is None:
        models_list(registry)


@models_app.command("list")
def models_list(registry: RegistryOption = None) -> None:
    """Base models available offline, then registered fine-tuned model versions."""
    from tuneforge.models import list_local_models
    from tuneforge.runs import registry as reg

    table = Table(title="Local base models")
    for col in ("name", "kind", "location", "ready"):
        table.add_column(col)
    for m in list_local_models():
        table.add_row(m.name, m.kind, m.location, "yes" if m.ready else "converts on first use")
    out.print(table)
    registered = reg.list_models(registry)
    if registered:
        table = Table(title=f"Registered models ({reg.registry_path(registry)})")
        for col in ("name", "version", "stage", "run"):
            table.add_column(col)
        for m in registered:
            table.add_row(m["name"], str(m["version"]), m["stage"], m["run_id"])
        out.print(table)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    run: Annotated[str, typer.Argument(help="Run id or directory.")],
    registry: RegistryOption = None,
) -> None:
    """Register a finished run as the next version of a named model."""
    from tuneforge.runs import registry as reg

    version = reg.register_model(name, run, registry)
    out.print(f"Registered {name}@{version} ← {reg.get_run(run, registry).id}")


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    stage: Annotated[str, typer.Option("--stage", help="Target stage.")] = "production",
    data: Annotated[
        Path | None, typer.Option("--data", help="Score both versions on this labelled file.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Allowed metric drop.")
    ] = 0.0,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if worse (recorded).")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Move a version to a stage; refused if it is worse than the current holder of that stage."""
    from tuneforge.runs.promotion import promote

    result = promote(name, version, stage, data=data, tolerance=tolerance, force=force, db=registry)
    if result.get("compared_with"):
        out.print(
            f"{name}@{version} → {stage}: {result['metric']} {result['candidate']:.4f} vs "
            f"{result['compared_with']} {result['current']:.4f} on {result['evaluation_set']}"
            + (" [bold red](forced: worse, recorded)[/bold red]" if result.get("forced") else "")
        )
    else:
        out.print(f"{name}@{version} → {stage} (no previous {stage} version)")


@runs_app.command("list")
def runs_list(registry: RegistryOption = None) -> None:
    """Every recorded run with its status and headline metric."""
    from tuneforge.runs import registry as reg

    table = Table(title=f"Runs ({reg.registry_path(registry)})")
    for col in ("run", "task", "method", "base model", "status", "metric (base → tuned)"):
        table.add_column(col)
    for r in reg.list_runs(registry):
        m = r.json("metrics") or {}
        headline = ""
        if m:
            metric = m["selection_metric"]
            split = "test" if "test" in m["tuned"] else "validation"
            base = m.get("base", {}).get(split, {}).get(metric)
            tuned = m["tuned"].get(split, {}).get(metric)
            headline = (
                f"{split} {metric}: "
                + (f"{base:.4f} → " if base is not None else "")
                + (f"{tuned:.4f}" if tuned is not None else "")
            )
        table.add_row(
            r.id,
            r.row["task"] or "",
            r.row["method"] or "",
            r.row["base_model"] or "",
            r.status,
            headline,
        )
    out.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id (or prefix) or directory.")],
    registry: RegistryOption = None,
) -> None:
    """A run's lineage: base weights, data hashes, versions, commit, metrics, parent chain."""
    from tuneforge.runs import registry as reg
    from tuneforge.runs.parents import chain_text as lineage_text

    chain = reg.lineage_chain(run, registry)
    record = chain[0]
    info = {
        k: record.row[k]
        for k in (
            "id",
            "path",
            "status",
            "task",
            "method",
            "base_model",
            "base_weights_sha256",
            "git_commit",
        )
    }
    info["status"] = record.status
    info["data"] = record.json("data")
    info["versions"] = record.json("versions")
    info["metrics"] = record.json("metrics")
    info["lineage"] = [r.id for r in chain]
    info["parent"] = record.row.get("parent")
    info["chain"] = lineage_text(chain)  # run -> parent -> ... -> base model
    out.print_json(json.dumps(info, default=str))


@runs_app.command("compare")
def runs_compare(
    run_a: Annotated[str, typer.Argument(help="First run.")],
    run_b: Annotated[str, typer.Argument(help="Second run.")],
    registry: RegistryOption = None,
) -> None:
    """Recipes diffed and metrics side by side."""
    from tuneforge.runs import registry as reg

    a, b = reg.get_run(run_a, registry), reg.get_run(run_b, registry)
    table = Table(title="Recipe differences")
    for col in ("field", a.id, b.id):
        table.add_column(col)
    flat_a, flat_b = _flatten(a.json("recipe") or {}), _flatten(b.json("recipe") or {})
    for key in sorted(set(flat_a) | set(flat_b)):
        if flat_a.get(key) != flat_b.get(key):
            table.add_row(key, str(flat_a.get(key)), str(flat_b.get(key)))
    out.print(table)
    table = Table(title="Metrics (tuned)")
    for col in ("split/metric", a.id, b.id):
        table.add_column(col)
    ma, mb = (r.json("metrics") or {} for r in (a, b))
    for split in sorted(set(ma.get("tuned", {})) | set(mb.get("tuned", {}))):
        names = sorted(
            set(ma.get("tuned", {}).get(split, {})) | set(mb.get("tuned", {}).get(split, {}))
        )
        for name in names:
            va, vb = (
                ma.get("tuned", {}).get(split, {}).get(name),
                mb.get("tuned", {}).get(split, {}).get(name),
            )
            table.add_row(
                f"{split}/{name}",
                "" if va is None else f"{va:.4f}",
                "" if vb is None else f"{vb:.4f}",
            )
    out.print(table)


@runs_app.command("rm")
def runs_rm(
    run: Annotated[str, typer.Argument(help="Run id or directory.")],
    keep_files: Annotated[
        bool, typer.Option("--keep-files", help="Only forget the run; keep its folder.")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Remove a run from the registry and delete its folder (refused if a model version uses it)."""
    from tuneforge.runs import registry as reg

    record = reg.remove_run(run, registry, delete_files=not keep_files)
    out.print(f"Removed {record.id}" + ("" if keep_files else f" and {record.path}"))


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


@app.command()
def demo(
    set_: SetOption = None,
) -> None:
    """Fine-tune the embedded model on movie-review sentiment and show base vs fine-tuned."""
    from tuneforge.demo import run_demo

    run = run_demo(set_ or [])
    print_summary(run)


def _print_bias(probe: dict) -> None:
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


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in a browser.")] = False,
) -> None:
    """Regenerate a run's report.md, figures and self-contained report.html."""
    from tuneforge.report import write_report
    from tuneforge.runs.run import Run

    loaded = Run.load(run)
    path = write_report(loaded.path)
    console.print(f"Report: {path} (and {loaded.path / 'report.md'})")
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@data_app.command("check")
def data_check(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
) -> None:
    """Check a recipe's data: counts, balance, duplicates, leakage, lengths, unparseable rows."""
    from tuneforge.config import load_recipe
    from tuneforge.data.recipe_check import (
        check_recipe_data,
        findings_table,
        refuse_on_errors,
        summary_table,
    )
    from tuneforge.models import load_tokenizer
    from tuneforge.runs.parents import base_source
    from tuneforge.tasks import get_task

    loaded = load_recipe(recipe, set_ or [])
    source = base_source(loaded.base_model, trust_remote_code=loaded.trust_remote_code)
    tokenizer = load_tokenizer(source.path, trust_remote_code=loaded.trust_remote_code)
    result = check_recipe_data(loaded, tokenizer, get_task(loaded.task), recipe.parent)
    out.print(summary_table(result))
    out.print(findings_table(result))
    refuse_on_errors(result)


def print_summary(run) -> None:
    metrics = run.metrics
    for split, tuned in metrics["tuned"].items():
        _print_comparison(
            f"{run.path.name}: {split}", metrics.get("base", {}).get(split, {}), tuned
        )
    if metrics.get("forgetting"):  # continued runs: the parent's validation set before and after
        from tuneforge.evaluation.forgetting import describe

        out.print(describe(metrics["forgetting"]), highlight=False)
    console.print(f"Report: {run.path / 'report.html'} (and report.md)")


def _print_comparison(title: str, base: dict, tuned: dict) -> None:
    from tuneforge.report import summary_rows

    table = Table(title=f"{title} (n={tuned.get('n')})")
    for col in ("metric", "base model", "fine-tuned", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for row in summary_rows(base, tuned):
        table.add_row(*row)
    out.print(table)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=True)
    except TuneforgeError as e:
        # escaped: a message quotes user input, and "[x]" in it is not rich markup
        console.print(
            f"[bold red]error:[/bold red] {escape(e.message)}", markup=True, highlight=False
        )
        if e.hint:
            console.print(f"  [dim]hint:[/dim] {escape(e.hint)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
