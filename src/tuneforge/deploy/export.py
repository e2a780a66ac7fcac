"""Export a finished run: the LoRA adapter, a merged Hugging Face model, or a GGUF file.

Every export is a folder with the model files, a model card (README.md) and export.json (what was
exported, from which run, file sizes, data hashes, the export check). The folder is built under a
temporary name next to the target and renamed when complete, so a reader never sees half an
export; an existing target is replaced only with `force`, and only if it is an earlier export.

The merged and GGUF exports are checked before they are published: the written files are loaded
back with stock transformers and their logits and greedy output compared with the fine-tuned
model. A merged or F32 export that does not match is refused; F16/Q8_0 differences are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import tuneforge
from tuneforge import devices
from tuneforge.answer_forward import cache_argument
from tuneforge.deploy import gguf as gguf_writer  # by module: a test replaces write_gguf
from tuneforge.deploy.model_card import data_entries, render_card
from tuneforge.errors import TuneforgeError, did_you_mean
from tuneforge.progress import console, status
from tuneforge.runs.run import Run

FORMATS = ("adapter", "merged", "gguf")
DEFAULT_QUANT = "q8_0"  # near-lossless at about half of F16's size
GREEDY_TOKENS = 16
# merged and F32 exports must reproduce the fine-tuned model's logits to within this (relative to
# the largest logit): anything more is a broken export, not rounding.
EXACT_TOLERANCE = 1e-4
PROBE_TEXT = "A short text to check the export: numbers 12345, naïve café, and a question?"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    files: dict[str, int]  # model files (not README.md / export.json) -> bytes
    verification: dict[str, Any] | None
    seconds: float
    details: dict[str, Any]


def export_run(
    run,
    format: str,
    output: str | Path,
    *,
    quant: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Export `run` (a :class:`tuneforge.runs.run.Run` or its directory) to the folder `output`.

    `format`: adapter | merged | gguf; `quant` (gguf only): f32 | f16 | q8_0 (default). `verify` loads the
    written model back and compares it with the fine-tuned one (merged and gguf).
    """
    t0 = time.perf_counter()
    fmt = _one_of(format, FORMATS, "format")
    if quant is not None and fmt != "gguf":
        raise TuneforgeError(f"export: --quant applies to --format gguf only, not {fmt}")
    quant = _one_of((quant or DEFAULT_QUANT).lower(), gguf_writer.QUANTS, "--quant")
    # the saved weights as they are (fp32), not a bf16 copy made for faster inference
    run = run.exact() if isinstance(run, Run) else Run.load(run, precision="fp32")
    output = Path(output).expanduser()
    _check_output(output, run.path, force)
    _check_compatible(run, fmt)

    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as e:
        raise TuneforgeError(f"--output {output}: cannot write there ({e.strerror})") from None
    try:
        phases = Phases()
        details, verification = EXPORTERS[fmt](
            run, staging, quant=quant, verify=verify, phases=phases
        )
        details["seconds_by_step"] = phases.seconds
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        record = _record(run, fmt, files, details, verification, time.perf_counter() - t0)
        _write_card(staging, record, run)
        (staging / "export.json").write_text(
            json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
        )
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(output, fmt, files, verification, time.perf_counter() - t0, details)


# --------------------------------------------------------------------------------------------------
# Checks before any work


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise TuneforgeError(
            f"export: unknown {what} '{value}'{did_you_mean(value, choices)}",
            hint=f"choose one of: {', '.join(choices)}",
        )
    return value


def _check_output(output: Path, run_path: Path, force: bool) -> None:
    if output.suffix == ".gguf":
        raise TuneforgeError(
            f"--output {output}: give a folder, not a file name",
            hint="the export writes the model file(s), README.md and export.json into that folder",
        )
    resolved, run_resolved = output.resolve(), run_path.resolve()
    if resolved == run_resolved or run_resolved.is_relative_to(resolved):
        raise TuneforgeError(
            f"--output {output} would overwrite the run directory itself",
            hint="choose another folder",
        )
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise TuneforgeError(
            f"--output {output} already exists",
            hint="choose a new folder, or pass --force to replace an earlier export",
        )
    is_export = (
        output.is_dir()
        and not output.is_symlink()
        and ((output / "export.json").is_file() or not any(output.iterdir()))
    )
    if not is_export:
        raise TuneforgeError(
            f"--output {output} exists and is not a tuneforge export (no export.json): not replacing it, even with --force",
            hint="remove it yourself or choose another folder",
        )


def _check_compatible(run, fmt: str) -> None:
    task, method = run.meta["task"], run.meta["method"]
    if fmt == "adapter" and method != "lora":
        raise TuneforgeError(
            f"export --format adapter: {run.path} was trained with method '{method}': it holds full weights, not an adapter",
            hint="use --format merged (or gguf for sft/pretrain runs)",
        )
    if fmt == "gguf":
        if task == "classification":
            raise TuneforgeError(
                f"export --format gguf: {run.path} is a classification run; GGUF (llama.cpp) holds causal "
                "language models, not a classification head",
                hint="use --format merged (transformers) or --format adapter",
            )
        folder = run.source.path if method == "lora" else run.path / "model"
        gguf_writer.check_exportable(
            AutoConfig.from_pretrained(folder, trust_remote_code=run.recipe.trust_remote_code),
            run.tokenizer,
            gguf_writer.source_gguf(run.source.path),
        )


# --------------------------------------------------------------------------------------------------
# Exporters: (run, staging folder) -> (details, verification)


def _export_adapter(run, folder: Path, **_: Any) -> tuple[dict[str, Any], None]:
    adapter = run.path / "adapter"
    for src in sorted(adapter.iterdir()):
        if src.is_file() and src.name != "README.md":  # PEFT's placeholder card; ours replaces it
            shutil.copy2(src, folder / src.name)
    for src in sorted((run.path / "tokenizer").iterdir()):
        if src.is_file():
            shutil.copy2(src, folder / src.name)
    if run.labels:
        labels = {
            "labels": run.labels,
            "id2label": dict(enumerate(run.labels)),
            "label2id": {lab: i for i, lab in enumerate(run.labels)},
            "pad_token_id": run.tokenizer.pad_token_id,
        }
        (folder / "labels.json").write_text(
            json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    config = json.loads((adapter / "adapter_config.json").read_text())
    keys = (
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "target_modules",
        "modules_to_save",
        "base_model_name_or_path",
    )
    return {"adapter": {k: config.get(k) for k in keys}}, None


def _export_merged(
    run, folder: Path, *, verify: bool, phases: Phases, **_: Any
) -> tuple[dict[str, Any], dict | None]:
    reference = _reference(run, phases) if verify else None
    model = merged_model(run, phases)
    with phases("save", "Saving merged safetensors"):
        model.config.pad_token_id = run.tokenizer.pad_token_id
        model.save_pretrained(folder, safe_serialization=True)
        run.tokenizer.save_pretrained(folder)
    del model
    verification = None
    if verify:
        with phases("check", "Checking the export (loading it back with transformers)"):
            reloaded = load_merged(folder, run.meta["task"])
            verification = compare(
                reference, reloaded, "transformers from_pretrained(folder)", run.meta["task"]
            )
        _require_exact(verification, "merged")
    return {"dtype": "float32"}, verification


def _export_gguf(
    run, folder: Path, *, quant: str, verify: bool, phases: Phases
) -> tuple[dict[str, Any], dict | None]:
    reference = _reference(run, phases) if verify else None
    model = merged_model(run, phases)
    name = f"{_slug(run.meta['name'])}-{quant.upper()}.gguf"
    eot = run.meta["info"].get("end_of_turn")
    source = gguf_writer.source_gguf_fields(run.source.path)
    meta = run.meta
    with phases("write", f"Writing {name}"):
        summary = gguf_writer.write_gguf(
            model,
            run.tokenizer,
            folder / name,
            quant=quant,
            name=meta["name"],
            description=f"{meta['base_model']} fine-tuned with tuneforge ({meta['task']}, {meta['method']})",
            pre=source.get("pre"),
            eot=eot,
            license=source.get("license"),
            source=Path(source["path"]) if "path" in source else None,
        )
    del model
    modelfile = f"FROM ./{name}\n"
    for stop in dict.fromkeys(t for t in (eot, run.tokenizer.eos_token) if t):
        modelfile += f"PARAMETER stop {json.dumps(stop)}\n"
    (folder / "Modelfile").write_text(modelfile, encoding="utf-8")
    details = {
        "gguf": {
            "file": name,
            "quant": quant,
            "tensors": summary.tensors,
            "tensor_types": summary.tensor_types,
            "architecture": summary.architecture,
            "tokenizer": "copied from the base model's GGUF"
            if summary.tokenizer == "copy"
            else "gpt2 (byte-level BPE)",
            "pre_tokenizer": source.get("pre") or "from tokenizer.json",
        }
    }
    verification = None
    if verify:
        with phases("check", f"Checking the export (loading {name} back with transformers)"):
            reloaded = load_gguf(folder, name)
            verification = compare(
                reference,
                reloaded,
                "transformers from_pretrained(folder, gguf_file=...)",
                meta["task"],
            )
            del reloaded
        with phases("check_tokenizer", "Checking the GGUF tokenizer"):
            tokenizer = load_gguf_tokenizer(folder, name)
            verification.update(compare_tokenizers(run.tokenizer, tokenizer))
        if quant == "f32":
            _require_exact(verification, "GGUF F32")
        if not verification["tokenizer_match"]:
            console.print(
                "[yellow]warning[/yellow]: transformers' GGUF tokenizer splits the probe texts "
                "differently from the run's tokenizer (see export.json)"
            )
    return details, verification


EXPORTERS = {"adapter": _export_adapter, "merged": _export_merged, "gguf": _export_gguf}


# --------------------------------------------------------------------------------------------------
# Models


class Phases:
    """Seconds per step of an export: shown as progress, kept in export.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, message: str) -> Iterator[None]:
        t = time.perf_counter()
        with status(message):
            yield
        self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - t, 1)


def _tuned_model(run, phases: Phases):
    if "model" in run.__dict__:  # already loaded (cached_property)
        return run.model
    with phases("load", f"Loading the fine-tuned model of {run.path.name}"):
        return run.model


def _reference(run, phases: Phases) -> dict[str, Any]:
    model = _tuned_model(run, phases)
    with phases("reference", "Recording the fine-tuned model's logits and greedy output"):
        return fingerprint(model, _probe_ids(run), run.meta["task"])


def merged_model(run, phases: Phases | None = None):
    """The fine-tuned model as a plain transformers model: LoRA merged into the base weights."""
    phases = phases or Phases()
    model = _tuned_model(run, phases)
    if run.meta["method"] != "lora":
        return model
    with phases("merge", "Merging LoRA into the base weights"):
        merged = model.merge_and_unload()
    run.__dict__.pop("model", None)  # the cached PEFT wrapper is gone: merging replaced its layers
    return merged.eval()


def load_merged(folder: Path, task: str):
    """A merged export as stock transformers loads it (also `tuneforge verify`'s loader)."""
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()


def load_gguf(folder: Path, name: str):
    """A GGUF export as transformers loads it (de-quantized to float32)."""
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def load_gguf_tokenizer(folder: Path, name: str):
    """The tokenizer transformers rebuilds from a GGUF file's metadata (chat template included)."""
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


# --------------------------------------------------------------------------------------------------
# The export check: same logits, same greedy continuation


def _probe_ids(run):
    tokenizer = run.tokenizer
    if run.meta["task"] == "sft" and tokenizer.chat_template:
        messages = [
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
        ]
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return enc["input_ids"]
    return tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]


def _greedy(model, ids, n: int):
    """`ids` plus `n` greedy tokens (with the KV cache: one token per step after the prompt)."""
    name = cache_argument(model) or "past_key_values"  # `cache` from transformers 5.24
    out = model(input_ids=ids, use_cache=True)
    seq = ids
    for step in range(n):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        if step < n - 1:
            cache = out["cache"] if "cache" in out else out["past_key_values"]
            out = model(input_ids=nxt, use_cache=True, **{name: cache})
    return seq


def fingerprint(model, ids, task: str) -> dict[str, Any]:
    ids = ids.to(devices.model_device(model))
    with torch.no_grad():
        if task == "classification":
            return {"ids": ids, "logits": model(input_ids=ids).logits[0].float()}
        seq = _greedy(model, ids, GREEDY_TOKENS)
        return {"ids": ids, "sequence": seq, "logits": model(input_ids=seq).logits[0].float()}


def compare(reference: dict[str, Any], model, loader: str, task: str) -> dict[str, Any]:
    """The reloaded `model` run on the reference's device (the fine-tuned model's), same inputs."""
    model = devices.place(model, reference["ids"].device)
    with torch.no_grad():
        if task == "classification":
            logits = model(input_ids=reference["ids"]).logits[0].float()
            ref = reference["logits"]
            return {
                "loader": loader,
                "tokens": int(reference["ids"].shape[1]),
                "max_abs_logit_diff": float((logits - ref).abs().max()),
                "max_abs_logit": float(ref.abs().max()),
                "same_label": bool(logits.argmax() == ref.argmax()),
            }
        seq = reference["sequence"]
        logits = model(input_ids=seq).logits[0].float()
        greedy = _greedy(model, reference["ids"], GREEDY_TOKENS)
    ref = reference["logits"]
    start = reference["ids"].shape[1]
    ours, theirs = seq[0, start:].tolist(), greedy[0, start:].tolist()
    common = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), len(ours)
    )
    return {
        "loader": loader,
        "tokens": int(seq.shape[1]),
        "max_abs_logit_diff": float((logits - ref).abs().max()),
        "mean_abs_logit_diff": float((logits - ref).abs().mean()),
        "max_abs_logit": float(ref.abs().max()),
        "top1_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        "greedy_tokens": GREEDY_TOKENS,
        "greedy_match": ours == theirs,
        "greedy_common_prefix": common,
    }


def compare_tokenizers(ours, theirs) -> dict[str, Any]:
    texts = [PROBE_TEXT, "  leading spaces,\ttabs\nand new lines\n\n", "Émigré 🙂 über 3.14159"]
    if ours.chat_template:
        texts.append(
            ours.apply_chat_template(
                [{"role": "user", "content": "Hi there"}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
    same = all(ours(t)["input_ids"] == theirs(t)["input_ids"] for t in texts)
    return {
        "tokenizer_match": same,
        "chat_template_match": (ours.chat_template or None) == (theirs.chat_template or None),
    }


def _require_exact(check: dict[str, Any], what: str) -> None:
    limit = EXACT_TOLERANCE * max(1.0, check["max_abs_logit"])
    check["tolerance"] = limit
    if check["max_abs_logit_diff"] > limit:
        raise TuneforgeError(
            f"export: the {what} model does not reproduce the fine-tuned model: largest logit difference "
            f"{check['max_abs_logit_diff']:.3g} > {limit:.3g}; nothing was written",
            hint="this is a bug (or an adapter on tied embeddings, which merging cannot express); "
            "--no-verify writes it anyway",
        )


# --------------------------------------------------------------------------------------------------
# Record, card, publish


def _record(
    run, fmt: str, files: dict[str, int], details: dict, verification: dict | None, seconds: float
) -> dict:
    meta = run.meta
    return {
        "format": fmt,
        "run": str(run.path.resolve()),
        "run_name": meta["name"],
        "task": meta["task"],
        "method": meta["method"],
        "base_model": meta["base_model"],
        "base_model_path": meta.get("base_model_path"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tuneforge_version": tuneforge.__version__,
        "files": files,
        "data": data_entries(meta.get("data_sources", {})),
        "verification": verification,
        "seconds": round(seconds, 1),
        **details,
    }


def _write_card(folder: Path, record: dict[str, Any], run) -> None:
    metrics = run.metrics if (run.path / "metrics.json").is_file() else {}
    recipe = yaml.safe_load((run.path / "recipe.yaml").read_text()) or {}
    (folder / "README.md").write_text(
        render_card(record, run.meta, metrics, recipe), encoding="utf-8"
    )


def _publish(staging: Path, output: Path) -> None:
    """Rename the finished folder into place; an earlier export is swapped out, then removed."""
    if not (output.exists() or output.is_symlink()):
        try:
            staging.rename(output)
        except OSError as e:
            raise TuneforgeError(f"--output {output}: cannot create it ({e.strerror})") from None
        return
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    output.rename(old)
    try:
        staging.rename(output)
    except OSError:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def describe(result: ExportResult) -> list[str]:
    """What the CLI prints after an export: where, how big, how well it matches the run."""
    size = sum(result.files.values())
    lines = [
        f"Exported {result.format} to {result.path} ({len(result.files)} model files, "
        f"{size / 1e6:.1f} MB, {result.seconds:.0f} s); model card: {result.path / 'README.md'}"
    ]
    check = result.verification
    if check:
        line = (
            f"Check: largest logit difference {check['max_abs_logit_diff']:.3g} "
            f"(logits up to {check['max_abs_logit']:.3g})"
        )
        if "greedy_match" in check:
            same = "identical" if check["greedy_match"] else "different"
            line += f", greedy {check['greedy_tokens']} tokens {same}"
        if "same_label" in check:
            line += ", same label" if check["same_label"] else ", DIFFERENT label"
        if "tokenizer_match" in check:
            line += ", tokenizer " + ("identical" if check["tokenizer_match"] else "DIFFERENT")
        lines.append(line)
    return lines
