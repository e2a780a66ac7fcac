"""Putting a fine-tuned run to use: predict, generate, chat, export, serve."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tuneforge.cli.common import AllowPickle, DeviceOption, load_run, opt_in_to_pickle
from tuneforge.cli.output import emit_json_lines
from tuneforge.deploy.limits import Limits
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console, out


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
        bool,
        typer.Option(
            "--json",
            help="Print JSON lines on stdout, one per input (with --input: unless --output).",
        ),
    ] = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Predict with a fine-tuned run: texts on the command line or a whole file."""
    from tuneforge.deploy.predict import (  # deferred: CLI start (torch)
        predict_file,
        predict_records,
        predict_texts,
    )

    opt_in_to_pickle(run, allow_pickle)
    if bool(texts) == bool(input):
        raise TuneforgeError(
            "predict: give texts on the command line or --input FILE (one of them)"
        )
    loaded = load_run(run, device)
    if input is not None and as_json and output is None:
        emit_json_lines(predict_records(loaded, input))
        return
    if input is not None:
        target = output or input.with_suffix(".predictions.jsonl")
        n = predict_file(loaded, input, target)
        console.print(f"Wrote {n} predictions to {target}")
        return
    results = predict_texts(loaded, texts or [])
    if as_json:
        emit_json_lines({"text": text, **r} for text, r in zip(texts or [], results, strict=True))
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
    loaded = load_run(run, device)
    print(
        loaded.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    )


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
    loaded = load_run(run, device)
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
    from tuneforge.deploy.export import describe, export_run  # deferred: CLI start (torch)

    opt_in_to_pickle(run, allow_pickle)
    result = export_run(
        load_run(run, device), format, output, quant=quant, force=force, verify=not no_verify
    )
    for line in describe(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


SERVE_LIMITS = Limits()
LIMITS_PANEL = "Request limits"
MaxBodyBytes = Annotated[
    int,
    typer.Option(
        min=1, help="Largest request body in bytes (413 past it).", rich_help_panel=LIMITS_PANEL
    ),
]
MaxTexts = Annotated[
    int,
    typer.Option(min=1, help="Texts in one /v1/classify call.", rich_help_panel=LIMITS_PANEL),
]
MaxPromptTokens = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Longest prompt in tokens, chat template included.",
        show_default="the model's context",
        rich_help_panel=LIMITS_PANEL,
    ),
]
MaxTokens = Annotated[
    int,
    typer.Option(
        min=1, help="Largest max_tokens a request may ask for.", rich_help_panel=LIMITS_PANEL
    ),
]
DefaultMaxTokens = Annotated[
    int,
    typer.Option(
        min=1,
        help="Tokens generated when a request gives no max_tokens.",
        rich_help_panel=LIMITS_PANEL,
    ),
]
MaxWaiting = Annotated[
    int,
    typer.Option(
        min=1,
        help="Generation requests that may wait for a batch (not yet decoding); 503 past it.",
        rich_help_panel=LIMITS_PANEL,
    ),
]
GenerationBatch = Annotated[
    int,
    typer.Option(
        min=1,
        help="Generation requests decoded together, each with its own settings (1: one at a time).",
        rich_help_panel=LIMITS_PANEL,
    ),
]


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
            help="Require 'Authorization: Bearer KEY' on every request but the health probes "
            "(/health, /ready).",
        ),
    ] = None,
    guard_health: Annotated[
        bool,
        typer.Option(
            "--guard-health",
            help="With --api-key: require the key on /health and /ready too (default: open, "
            "for an orchestrator's probes; they tell no model details).",
        ),
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Model id for clients (default: the run's folder).")
    ] = None,
    feedback_log: Annotated[
        Path | None,
        typer.Option(
            "--feedback-log",
            help="Where chat completions and POST /v1/feedback are recorded (generative runs; "
            "default: <run>/feedback/feedback.jsonl).",
        ),
    ] = None,
    no_feedback: Annotated[
        bool,
        typer.Option("--no-feedback", help="Record no completions and serve no /v1/feedback."),
    ] = False,
    allow_pickle: AllowPickle = False,
    max_body_bytes: MaxBodyBytes = SERVE_LIMITS.max_body_bytes,
    max_texts: MaxTexts = SERVE_LIMITS.max_texts,
    max_prompt_tokens: MaxPromptTokens = SERVE_LIMITS.max_prompt_tokens,
    max_tokens: MaxTokens = SERVE_LIMITS.max_tokens,
    default_max_tokens: DefaultMaxTokens = SERVE_LIMITS.default_max_tokens,
    max_waiting: MaxWaiting = SERVE_LIMITS.max_waiting,
    generation_batch: GenerationBatch = SERVE_LIMITS.generation_batch,
    device: DeviceOption = None,
) -> None:
    """Serve a run over an OpenAI-compatible HTTP API (chat, completions; /v1/classify)."""
    if no_feedback and feedback_log is not None:
        raise TuneforgeError("--no-feedback and --feedback-log contradict each other")
    opt_in_to_pickle(run, allow_pickle)
    from tuneforge.deploy.serve import serve as serve_run  # deferred: CLI start (torch, fastapi)

    limits = replace(
        SERVE_LIMITS,
        max_body_bytes=max_body_bytes,
        max_texts=max_texts,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        max_waiting=max_waiting,
        generation_batch=generation_batch,
    )
    serve_run(
        load_run(run, device),
        host=host,
        port=port,
        api_key=api_key,
        name=name,
        limits=limits,
        guard_health=guard_health,
        feedback_log=False if no_feedback else (feedback_log or True),
    )
