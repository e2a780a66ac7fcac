"""README.md for an exported model: what it is, what it learned from, how good it is, how to load it.

Everything comes from the run directory (run.json, metrics.json, recipe.yaml) and the export itself;
data files are hashed at export time so a reader can check they hold the same data.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.evaluation.metrics import HEADLINE_METRICS
from tuneforge.models import EMBEDDED

TASK_USE = {
    "classification": "assigning one of the labels {labels} to a short text like those in the training data",
    "sft": "answering prompts in the style and format of the training conversations",
    "pretrain": "continuing text in the domain of the training corpus (a base for further fine-tuning)",
}


# --------------------------------------------------------------------------------------------------
# Data provenance


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_entries(data_sources: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per split: the source, its size and sha256 (a folder: over its sorted files)."""
    entries = []
    for split, source in data_sources.items():
        path = Path(source)
        entry: dict[str, Any] = {"split": split, "source": source}
        if path.is_file():
            entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            listing = "".join(
                f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n" for p in files
            )
            entry.update(
                bytes=sum(p.stat().st_size for p in files),
                files=len(files),
                sha256=hashlib.sha256(listing.encode()).hexdigest(),
            )
        elif "(" in source:
            entry["note"] = "held out from the training file"
        else:
            entry["note"] = "not found at export time"
        entries.append(entry)
    return entries


def _examples(info: dict[str, Any], split: str) -> str:
    if "counts" in info and split in info["counts"]:
        return f"{sum(info['counts'][split].values())} examples"
    if "examples" in info and split in info["examples"]:
        return f"{info['examples'][split]} conversations"
    if "documents" in info and split in info["documents"]:
        tokens = info.get("tokens", {}).get(split)
        return f"{info['documents'][split]} documents" + (f", {tokens:,} tokens" if tokens else "")
    return ""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------------------------------
# Card


def render_card(
    export: dict[str, Any],
    run_meta: dict[str, Any],
    metrics: dict[str, Any],
    recipe: dict[str, Any],
) -> str:
    """The model card; `export` is what export.json holds (format, files, verification, data)."""
    task, method, fmt = run_meta["task"], run_meta["method"], export["format"]
    info = run_meta.get("info", {})
    name = run_meta["name"]
    base = run_meta["base_model"]
    lines = [
        "---",
        "library_name: "
        + ("peft" if fmt == "adapter" else "transformers" if fmt == "merged" else "gguf"),
        f"base_model: {base}",
        "tags: [tuneforge, " + task + ", " + method + "]",
        "---",
        "",
        f"# {name} ({fmt})",
        "",
        f"`{base}` fine-tuned with tuneforge for **{task}** using **{method}**, exported as "
        f"**{_format_title(export)}** on {datetime.now(UTC).strftime('%Y-%m-%d')}.",
        "",
        "## Model",
        "",
        _table(["", ""], _model_rows(export, run_meta, recipe)),
        "",
    ]
    lines += _base_section(run_meta, fmt)
    lines += _data_section(export.get("data", []), info)
    lines += _metrics_section(metrics)
    lines += _verification_section(export)
    lines += _use_section(task, info, run_meta)
    lines += ["## How to load it", "", *_loading(export, run_meta), ""]
    lines += [
        "## Files",
        "",
        _table(["file", "size"], [[f"`{f}`", _size(b)] for f, b in export["files"].items()]),
        "",
    ]
    return "\n".join(lines)


def _format_title(export: dict[str, Any]) -> str:
    if export["format"] == "gguf":
        return f"GGUF ({export['gguf']['quant'].upper()})"
    return {
        "adapter": "a PEFT LoRA adapter",
        "merged": "a merged Hugging Face model (safetensors)",
    }[export["format"]]


def _model_rows(
    export: dict[str, Any], meta: dict[str, Any], recipe: dict[str, Any]
) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["run", f"`{export['run']}`"],
        ["base model", f"`{meta['base_model']}`"],
        ["task", meta["task"]],
        ["method", meta["method"]],
    ]
    if meta["method"] == "lora" and recipe.get("lora"):
        lora = recipe["lora"]
        rows.append(["LoRA", ", ".join(f"{k}={v}" for k, v in lora.items())])
    params = meta.get("parameters", {})
    if params:
        rows.append(
            [
                "trainable parameters",
                f"{params.get('trainable', 0):,} of {params.get('total', 0):,}",
            ]
        )
    training = recipe.get("training", {})
    if training:
        keys = ("max_steps" if training.get("max_steps") else "epochs",)
        keys += ("learning_rate", "batch_size", "max_length", "seed")
        rows.append(
            [
                "training",
                ", ".join(f"{k}={training[k]}" for k in keys if training.get(k) is not None),
            ]
        )
    if meta.get("info", {}).get("labels"):
        rows.append(["labels", ", ".join(f"`{lab}`" for lab in meta["info"]["labels"])])
    rows.append(["tuneforge", export.get("tuneforge_version", "")])
    return rows


def _base_section(meta: dict[str, Any], fmt: str) -> list[str]:
    base, path = meta["base_model"], meta.get("base_model_path", "")
    lines = ["## Base model", ""]
    if base in EMBEDDED:
        entry = EMBEDDED[base]
        where = (
            f"the packages' `{entry.package}.assemble(path)` joins its chunks into that file"
            if entry.chunked
            else f"the file lies in the installed package (`{entry.package}/{entry.gguf_file}`)"
        )
        lines += [
            f"`{base}` is one of tuneforge's embedded base models: {entry.description}. It is the "
            f"GGUF file `{entry.gguf_file}` de-quantized to float32, so the weights this model was "
            f"tuned on are the {entry.quantization}-rounded ones, not the original bf16 release.",
            "",
            f"To obtain it: `{entry.install}`; {where}. transformers reads it with "
            f'`AutoModelForCausalLM.from_pretrained(<folder>, gguf_file="{entry.gguf_file}")`, '
            f'and tuneforge caches that conversion (`tuneforge.models.resolve_base_model("{base}").path`).',
        ]
    else:
        lines.append(f"`{base}`.")
    if path:
        lines += ["", f"Resolved on the training machine to `{path}`."]
    if fmt == "adapter":
        lines += [
            "",
            "The adapter only holds the LoRA weights (and, for classification, the head): it must be "
            "loaded on exactly this base model. `adapter_config.json` names the base as "
            "`base_model_name_or_path`; point it at your copy if the path differs.",
        ]
    else:
        lines += ["", "This export holds the full weights: the base model is not needed to use it."]
    return [*lines, ""]


def _data_section(entries: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    if not entries:
        return []
    rows = []
    for e in entries:
        size = _size(e["bytes"]) if "bytes" in e else ""
        if "files" in e:
            size += f" in {e['files']} files"
        digest = f"`{e['sha256']}`" if "sha256" in e else e.get("note", "")
        rows.append([e["split"], f"`{e['source']}`", _examples(info, e["split"]), size, digest])
    return [
        "## Data",
        "",
        _table(["split", "source", "size (rows)", "size (bytes)", "sha256 (at export time)"], rows),
        "",
    ] + (
        ["A folder's hash is the sha256 of its sorted `relative path NUL file sha256` lines.", ""]
        if any("files" in e for e in entries)
        else []
    )


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    tuned = metrics.get("tuned") or {}
    if not tuned:
        return []
    lines = ["## Evaluation: base model vs fine-tuned", ""]
    for split, values in tuned.items():
        base = (metrics.get("base") or {}).get(split, {})
        rows = metric_rows(base, values)
        if not rows:
            continue
        lines += [
            f"**{split}** (n={values.get('n', '?')})",
            "",
            _table(["metric", "base model", "fine-tuned", "change"], rows),
            "",
        ]
    best = metrics.get("best") or {}
    if best.get("metric"):
        lines += [
            f"Checkpoint selected on validation {best['metric']} (step {best.get('step')}).",
            "",
        ]
    if not metrics.get("base"):
        lines += ["The base model was not scored for this run (baseline disabled).", ""]
    return lines


def metric_rows(base: dict[str, Any], tuned: dict[str, Any]) -> list[list[str]]:
    """(metric, base, fine-tuned, change) for the headline metrics the tuned scores include."""
    rows = []
    for metric in HEADLINE_METRICS:
        t = tuned.get(metric)
        if not isinstance(t, int | float):
            continue
        b = base.get(metric)
        if isinstance(b, int | float):
            rows.append([metric, f"{b:.4g}", f"{t:.4g}", f"{t - b:+.4g}"])
        else:
            rows.append([metric, "—", f"{t:.4g}", ""])
    return rows


def _verification_section(export: dict[str, Any]) -> list[str]:
    check = export.get("verification")
    if not check:
        return []
    lines = [
        "## Export check",
        "",
        f"Reloaded with {check['loader']} and compared with the fine-tuned model on a probe of "
        f"{check['tokens']} tokens:",
        "",
        f"- largest logit difference: {check['max_abs_logit_diff']:.3g} (logits up to {check['max_abs_logit']:.3g})",
    ]
    if "top1_agreement" in check:
        lines.append(f"- same top-1 token at {100 * check['top1_agreement']:.1f}% of positions")
    if "greedy_match" in check:
        lines.append(
            f"- greedy continuation of {check['greedy_tokens']} tokens "
            + (
                "identical"
                if check["greedy_match"]
                else f"diverges after {check['greedy_common_prefix']} tokens"
            )
        )
    if "same_label" in check:
        lines.append(
            "- same predicted label" if check["same_label"] else "- **different predicted label**"
        )
    return [*lines, ""]


def _use_section(task: str, info: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    labels = ", ".join(info.get("labels") or [])
    use = TASK_USE.get(task, task).format(labels=labels)
    lines = [
        "## Intended use",
        "",
        f"For {use}. Check it on your own held-out data before relying on it.",
        "",
        "## Limitations",
        "",
        "- The scores above come from validation/test data drawn from the same sources as the training "
        "data; expect lower quality on text that differs in topic, style, language or length.",
        "- It inherits the base model's limitations and biases; fine-tuning on a small set does not "
        "remove them and may add those of the data.",
    ]
    if task == "classification":
        lines.append(
            f"- It always answers with one of the trained labels ({labels}), even for unrelated text."
        )
    else:
        lines.append(
            "- Generated text can be fluent and wrong; do not use it unreviewed where errors matter."
        )
    if meta["base_model"] in EMBEDDED:
        size = EMBEDDED[meta["base_model"]].parameters
        lines.append(
            f"- The embedded base is a {size}-parameter model: small, with limited knowledge."
        )
    lines.append(
        "- Not for decisions about people (credit, hiring, medical, legal) without human review."
    )
    return [*lines, ""]


def _loading(export: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    fmt, task = export["format"], meta["task"]
    classification = task == "classification"
    if fmt == "gguf":
        gguf_file = export["gguf"]["file"]
        return [
            "llama.cpp / Ollama:",
            "",
            "```sh",
            f"llama-cli -m {gguf_file} -cnv"
            if task == "sft"
            else f"llama-cli -m {gguf_file} -p 'Your text'",
            f"ollama create {meta['name'].lower()} -f Modelfile && ollama run {meta['name'].lower()}",
            "```",
            "",
            "transformers (de-quantizes to float32; needs the `gguf` package):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER", gguf_file="{gguf_file}")',
            f'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER", gguf_file="{gguf_file}")',
            "```",
        ]
    if fmt == "merged":
        cls = "AutoModelForSequenceClassification" if classification else "AutoModelForCausalLM"
        code = [
            "```python",
            "import torch",
            f"from transformers import AutoTokenizer, {cls}",
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
            f'model = {cls}.from_pretrained("PATH/TO/THIS/FOLDER").eval()',
        ]
        return [*code, *_usage(task), "```"]
    # adapter
    base_path = meta.get("base_model_path") or meta["base_model"]
    if classification:
        code = [
            "```python",
            "import json, torch",
            "from peft import PeftModel",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            'folder = "PATH/TO/THIS/FOLDER"',
            'labels = json.load(open(f"{folder}/labels.json"))',
            "tokenizer = AutoTokenizer.from_pretrained(folder)",
            "base = AutoModelForSequenceClassification.from_pretrained(",
            f'    "{base_path}", num_labels=len(labels["labels"]),',
            '    id2label={int(k): v for k, v in labels["id2label"].items()}, label2id=labels["label2id"],',
            '    pad_token_id=labels["pad_token_id"])',
            "model = PeftModel.from_pretrained(base, folder).eval()  # also restores the trained head",
        ]
    else:
        code = [
            "```python",
            "import torch",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'folder = "PATH/TO/THIS/FOLDER"',
            "tokenizer = AutoTokenizer.from_pretrained(folder)",
            f'base = AutoModelForCausalLM.from_pretrained("{base_path}")',
            "model = PeftModel.from_pretrained(base, folder).eval()",
            "# model = model.merge_and_unload()  # optional: plain transformers model, faster inference",
        ]
    return [*code, *_usage(task), "```"]


def _usage(task: str) -> list[str]:
    if task == "classification":
        return [
            'enc = tokenizer(["an example text"], return_tensors="pt")',
            "with torch.no_grad():",
            "    probs = model(**enc).logits.softmax(-1)[0]",
            "print(model.config.id2label[int(probs.argmax())], probs.tolist())",
        ]
    if task == "sft":
        return [
            'messages = [{"role": "user", "content": "Your question"}]',
            'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "out = model.generate(**ids, max_new_tokens=128, do_sample=False)",
            'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    return [
        'ids = tokenizer("The beginning of a document", return_tensors="pt")',
        "out = model.generate(**ids, max_new_tokens=64, do_sample=False)",
        "print(tokenizer.decode(out[0], skip_special_tokens=True))",
    ]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
