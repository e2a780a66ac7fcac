"""Export parity: the same held-out rows through the run, each export and a live server.

`tuneforge export` checks an export once, on one probe text. `verify` scores the rows a run was
measured on (its test split if it has one, else validation, or a `--data` file) through the run
itself (the reference) and through each target — a merged Hugging Face folder, a GGUF export (both
loaded with stock transformers, as a user would), a live `tuneforge serve` — and compares:

- tokenisation: each row's prompt token ids (the server reports only their count), the export's
  tokenizer on probe texts, and its chat template against the run's;
- stop behaviour: greedy answers end the same way (`stopped` / `finish_reason`);
- the task metric (classification accuracy; sft/preference exact match and ROUGE-L of greedy
  answers; pretrain loss where logits are available);
- drift: classification probabilities (largest and mean |Δp|, label agreement); generative:
  identical greedy answers, first divergence, and the mean |Δ log p| per token of the run's own
  greedy answers (teacher-forced; not for the server, which returns no logits).

Each target has a tolerance by format (TOLERANCES): merged, GGUF F32 and the server (the run's own
weights) must match near-exactly; F16 and Q8_0 may drift a little. The result is saved in the run
(verify.json), which `models promote --verify` requires to have passed.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tuneforge
from tuneforge import devices
from tuneforge.data.chat import (
    ChatFields,
    conversation,
    encode_prompt,
    end_of_turn,
    prompt_and_reference,
    stop_token_ids,
    with_system_prompt,
)
from tuneforge.data.preference import Pair, PreferenceFields, parse_row
from tuneforge.data.readers import row_where
from tuneforge.deploy.export import compare_tokenizers, load_gguf, load_gguf_tokenizer, load_merged
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.text_metrics import generation_metrics
from tuneforge.files import write_json
from tuneforge.generation import Sampling, generate
from tuneforge.progress import console, status
from tuneforge.runs.promotion import VERIFY_FILE  # promote --verify reads it
from tuneforge.runs.provenance import sha256_path
from tuneforge.runs.run import Run
from tuneforge.tasks.classification import encode, label_of

GENERATIVE_ROWS = 32  # rows answered by default for generative runs (--rows to change it)
PREFIX_CHARS = 200  # pretrain: the longest document prefix given as the prompt
SERVER_TIMEOUT_S = 600
CLASSIFY_CHUNK = 16  # texts per POST /v1/classify

# How each task's rows become prompts: labels (classification), chat (sft, preference: a chat
# answered greedily), text (pretrain: a document's prefix continued, the document scored).
KINDS = {"classification": "labels", "sft": "chat", "preference": "chat", "pretrain": "text"}


@dataclass(frozen=True)
class Tolerance:
    """How far a target may drift from the run and still pass."""

    name: str
    metric: float  # largest |Δ| of a 0-1 task metric (accuracy, exact match, ROUGE-L)
    loss: float  # largest |Δ| of the pretrain loss (nats per token)
    agreement: float  # least share of rows with the same label / the same stop behaviour
    answers: float  # least share of identical greedy answers (0: reported, not gated)
    probability: float  # classification: largest |Δp| of any label on any row
    logprob: float  # generative: largest mean |Δ log p| per token of the run's own answers


EXACT = Tolerance(
    "exact", metric=0.0, loss=1e-3, agreement=1.0, answers=1.0, probability=1e-4, logprob=1e-3
)
# Quantised weights: long greedy answers part somewhere (Q8_0 of a SmolLM2-135M sft run: 1 of 8
# 64-token answers identical, ROUGE-L 0.361 vs 0.341, mean |Δ log p| 0.022), so identical answers
# are reported, not gated; the metric and log-prob limits gate them.
TOLERANCES = {
    "merged": EXACT,
    "gguf-f32": EXACT,
    "server": EXACT,  # the run's own weights
    # a classification server computing in bf16 (a CPU with native bf16, as the run trained):
    # on the demo's 200 held-out reviews bf16 vs fp32 gave the same labels, largest |Δp| 0.055
    # (0.076 for an fp32-trained run), mean 0.004 (issue 22); generating servers stay fp32
    "server-bf16": Tolerance("bf16", 0.02, 0.01, 0.99, 0.0, probability=0.1, logprob=0.05),
    "gguf-f16": Tolerance("f16", 0.05, 0.01, 0.9, 0.0, probability=0.01, logprob=0.02),
    "gguf-q8_0": Tolerance("q8_0", 0.1, 0.05, 0.8, 0.0, probability=0.05, logprob=0.1),
}


# --------------------------------------------------------------------------------------------------
# The library function


def verify_run(
    run: str | Path | Run,
    exports: list[str | Path] = (),  # type: ignore[assignment]
    *,
    server: str | None = None,
    api_key: str | None = None,
    data: str | Path | None = None,
    rows: int | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Score the held-out rows through `run` and each target; the result (also saved as
    <run>/verify.json with `save`) has `passed` false when any target drifts beyond tolerance."""
    # the reference: the run's saved weights in fp32, as the exports hold them
    run = run.exact() if isinstance(run, Run) else Run.load(run, precision="fp32")
    kind = KINDS.get(run.meta["task"])
    if kind is None:
        raise TuneforgeError(f"verify: runs of task '{run.meta['task']}' cannot be verified yet")
    if not exports and not server:
        raise TuneforgeError(
            "verify: nothing to compare the run with",
            hint="give --export PATH (a merged or GGUF export folder) and/or --server URL",
        )
    if rows is not None and rows < 1:
        raise TuneforgeError(f"verify: --rows must be 1 or more, not {rows}")
    # every user error (paths, records, the server) before any model is loaded
    targets = [export_target(Path(p), run) for p in exports]
    if server:
        targets.append(server_target(server, api_key, run))
    held = held_out(run, Path(data) if data is not None else None, rows)
    inputs = make_inputs(run, held.rows, kind)

    with status(f"Scoring {len(held.rows)} rows with the run (the reference)"):
        reference = local_answers(run, run.model, run.tokenizer, inputs, None, own=True)
    result: dict[str, Any] = {
        "run": str(run.path.resolve()),
        "run_name": run.meta["name"],
        "task": run.meta["task"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tuneforge_version": tuneforge.__version__,
        "data": held.describe(),
        "reference": {"metrics": task_metrics(kind, inputs, reference), **_stops(reference)},
        "targets": [],
    }
    for target in targets:
        with status(f"Scoring {len(held.rows)} rows with {target.kind} {target.name}"):
            answers, extra = target.answers(run, inputs, reference)
        result["targets"].append(compare_target(target, kind, inputs, reference, answers, extra))
    result["passed"] = all(t["passed"] for t in result["targets"])
    if save:
        try:
            write_json(run.path / VERIFY_FILE, result)
        except OSError as e:
            console.print(
                f"[yellow]warning[/yellow]: could not save {run.path / VERIFY_FILE} ({e.strerror})"
            )
    return result


# --------------------------------------------------------------------------------------------------
# The held-out rows


@dataclass
class HeldOut:
    split: str  # test | validation | data
    source: str
    sha256: str | None
    rows: list[dict]
    available: int
    changed: bool = False  # the file's content differs from when the run was trained

    def describe(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "source": self.source,
            "sha256": self.sha256,
            "rows": len(self.rows),
            "available": self.available,
            "changed_since_training": self.changed,
        }


def held_out(run: Run, data: Path | None, n: int | None) -> HeldOut:
    """`--data`, else the run's test split, else its validation split; the first `n` rows (default:
    all for classification, GENERATIVE_ROWS for generative runs)."""
    info = run.meta["info"]
    if data is not None:
        if not data.exists():
            raise TuneforgeError(f"--data {data}: file not found")
        held = HeldOut("data", str(data), sha256_path(data), run.task.read_eval_rows(data, info), 0)
    else:
        held = _run_split(run)
    held.available = len(held.rows)
    if not held.rows:
        raise TuneforgeError(f"verify: {held.source} holds no rows", hint="pass --data FILE")
    if n is None:
        n = held.available if run.meta["task"] == "classification" else GENERATIVE_ROWS
    held.rows = held.rows[:n]
    return held


def _run_split(run: Run) -> HeldOut:
    recorded = run.meta.get("data") or {}
    info = run.meta["info"]
    for split in ("test", "validation"):
        entry = recorded.get(split)
        if not entry or "resolved" not in entry:
            continue
        path = Path(entry["resolved"])
        if not path.exists():
            raise TuneforgeError(
                f"verify: the run's {split} data {path} is gone",
                hint="pass --data FILE (labelled like the run's data)",
            )
        digest = sha256_path(path)
        changed = bool(entry.get("sha256")) and digest != entry["sha256"]
        if changed:
            console.print(
                f"[yellow]warning[/yellow]: {path} changed since the run was trained; "
                "verifying on its current rows"
            )
        rows = run.task.read_eval_rows(path, info)
        return HeldOut(split, str(path), digest, rows, 0, changed)
    train = recorded.get("train", {}).get("resolved")
    if train is None or not Path(train).exists():
        raise TuneforgeError(
            "verify: the run's held-out rows cannot be found (no test or validation file, and "
            "its training file is gone)",
            hint="pass --data FILE",
        )
    # validation_split: the same seeded share of the training file, split as `train` split it
    recipe = run.recipe.model_copy(
        update={
            "data": run.recipe.data.model_copy(
                update={"train": Path(train), "validation": None, "test": None}
            )
        }
    )
    splits = run.task.read(recipe, Path("."))
    source = f"{train} (validation_split={recipe.data.validation_split})"
    return HeldOut("validation", source, sha256_path(Path(train)), list(splits.validation), 0)


# --------------------------------------------------------------------------------------------------
# Inputs and answers


@dataclass
class Inputs:
    """The held-out rows as each kind of task prompts the model."""

    kind: str  # labels | chat | text
    texts: list[str] = field(default_factory=list)  # labels: the texts; text: document prefixes
    chats: list[list[dict]] = field(default_factory=list)  # chat: the prompt messages
    references: list[str] = field(default_factory=list)  # true label | reference answer | document
    labels: list[str] = field(default_factory=list)  # labels: the run's, in its order


def make_inputs(run: Run, rows: list[dict], kind: str) -> Inputs:
    info = run.meta["info"]
    if kind == "labels":
        return Inputs(
            kind,
            texts=[r[info["text_field"]] for r in rows],
            references=[label_of(r, info["label_field"]) for r in rows],
            labels=list(info["labels"]),
        )
    if kind == "text":
        return Inputs(
            kind, texts=[_prefix(r["text"]) for r in rows], references=[r["text"] for r in rows]
        )
    chats, refs = [], []
    for row in rows:
        where = row_where("data", row)
        if "chat" in info:  # sft
            prompt, reference = prompt_and_reference(
                conversation(row, ChatFields.from_info(info["chat"]), where)
            )
        else:  # preference: the chosen answer (pairs) or the completion (feedback)
            example = parse_row(row, PreferenceFields.from_info(info["preference"]), where)
            prompt = example.prompt
            reference = example.chosen if isinstance(example, Pair) else example.completion
        chats.append(prompt)
        refs.append(reference)
    return Inputs(kind, chats=chats, references=refs)


def _prefix(text: str) -> str:
    """A document's first half (at most PREFIX_CHARS), cut at a space: what the model continues."""
    cut = min(len(text) // 2, PREFIX_CHARS)
    space = text.rfind(" ", 0, cut)
    return (text[:space] if space > 0 else text[: max(cut, 1)]).rstrip()


@dataclass
class Answers:
    """One target's outputs on the rows (None where it cannot tell)."""

    prompt_ids: list[list[int]] | None = None
    prompt_tokens: list[int] | None = None  # the server: counts only
    probabilities: np.ndarray | None = None  # labels: rows x the run's labels
    texts: list[str] | None = None
    stopped: list[bool] | None = None
    token_ids: list[list[int]] | None = None  # the greedy answers' tokens (stop token included)
    scored: list[list[float]] | None = None  # log p of the reference's tokens, teacher-forced


def local_answers(
    run: Run, model, tokenizer, inputs: Inputs, reference: Answers | None, *, own: bool = False
) -> Answers:
    """A model loaded here: its own tokenizer's prompts, greedy answers one at a time (no padding,
    as the server answers), and the reference's tokens scored teacher-forced."""
    info, recipe, task = run.meta["info"], run.recipe, run.task
    if inputs.kind == "labels":
        ids = encode(tokenizer, inputs.texts, recipe.training.max_length)["input_ids"]
        predictions = task.predict(model, tokenizer, inputs.texts, info, recipe)
        probs = np.array([[p["probabilities"][lab] for lab in info["labels"]] for p in predictions])
        return Answers(prompt_ids=ids, probabilities=probs)
    if inputs.kind == "chat":
        system = task.system_prompt(recipe)
        prompts = [encode_prompt(tokenizer, with_system_prompt(c, system)) for c in inputs.chats]
        eot = info.get("end_of_turn") if own else end_of_turn(tokenizer)
        stops = stop_token_ids(tokenizer, eot)
    else:
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in inputs.texts]
        stops = [tokenizer.eos_token_id]
    sampling = Sampling(max_new_tokens=task.answer_tokens(recipe))
    outs = generate(model, tokenizer, prompts, stops, sampling, batch_size=1)
    answers = Answers(
        prompt_ids=prompts,
        texts=[o.text for o in outs],
        stopped=[o.stopped for o in outs],
        token_ids=[o.token_ids for o in outs],
    )
    teacher = reference or answers  # the run's own tokens, scored by every model the same way
    if inputs.kind == "chat":
        pairs = zip(teacher.prompt_ids or [], teacher.token_ids or [], strict=True)
    else:
        block = info.get("block_size", recipe.training.max_length)
        docs = [
            run.tokenizer(d, add_special_tokens=False)["input_ids"][:block]
            for d in inputs.references
        ]
        pairs = ((d[:1], d[1:]) for d in docs)
    answers.scored = [token_logprobs(model, p, a) for p, a in pairs]
    return answers


@torch.no_grad()
def token_logprobs(model, prompt: list[int], answer: list[int]) -> list[float]:
    """log p of each `answer` token after `prompt` and the answer tokens before it."""
    if not prompt or not answer:
        return []
    ids = torch.tensor([prompt + answer], device=devices.model_device(model))
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    picked = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None])
    return picked[:, 0].tolist()


# --------------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    kind: str  # merged | gguf | server
    name: str  # the folder or URL given
    tolerance: Tolerance
    identity: dict[str, Any]

    def answers(self, run: Run, inputs: Inputs, reference: Answers) -> tuple[Answers, dict]:
        raise NotImplementedError


@dataclass
class ExportTarget(Target):
    folder: Path = Path(".")
    file: str | None = None  # gguf: the model file in the folder

    def answers(self, run: Run, inputs: Inputs, reference: Answers) -> tuple[Answers, dict]:
        if self.kind == "gguf":
            model = load_gguf(self.folder, self.file)
            tokenizer = load_gguf_tokenizer(self.folder, self.file)
        else:
            model = load_merged(self.folder, run.meta["task"])
            from transformers import AutoTokenizer  # deferred: beside load_merged's (transformers)

            tokenizer = AutoTokenizer.from_pretrained(self.folder)
        model = devices.place(model, run.device)
        extra: dict[str, Any] = {"tokenizer": compare_tokenizers(run.tokenizer, tokenizer)}
        if inputs.kind == "labels":
            names = [model.config.id2label.get(i) for i in range(model.config.num_labels)]
            extra["labels"] = names
        try:
            return local_answers(run, model, tokenizer, inputs, reference), extra
        finally:
            del model
            devices.empty_cache()


def export_target(path: Path, run: Run) -> ExportTarget:
    """An export folder (or the .gguf file in one) made by `tuneforge export` from this run."""
    path = path.expanduser()
    if not path.exists():
        raise TuneforgeError(
            f"--export {path}: not found",
            hint="give a folder written by `tuneforge export --format merged|gguf`",
        )
    folder, file = (path.parent, path.name) if path.is_file() else (path, None)
    record_file = folder / "export.json"
    if not record_file.is_file():
        raise TuneforgeError(
            f"--export {path}: not a tuneforge export (no export.json in {folder})",
            hint="give a folder written by `tuneforge export`",
        )
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        fmt = record["format"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise TuneforgeError(
            f"--export {path}: {record_file} is not a valid export record"
        ) from None
    if fmt == "adapter":
        raise TuneforgeError(
            f"--export {path}: an adapter export is the run's own adapter, nothing to compare",
            hint="verify a merged or GGUF export (tuneforge export --format merged|gguf)",
        )
    if fmt not in ("merged", "gguf"):
        raise TuneforgeError(f"--export {path}: unknown export format '{fmt}' in {record_file}")
    exported_from = Path(str(record.get("run", "")))
    if exported_from.name != run.path.resolve().name or record.get("task") != run.meta["task"]:
        raise TuneforgeError(
            f"--export {path} was exported from another run ({record.get('run')}), not {run.path}",
            hint=f"verify it against its own run: tuneforge verify {record.get('run')} --export {path}",
        )
    quant = None
    if fmt == "gguf":
        quant = str((record.get("gguf") or {}).get("quant", "")).lower()
        file = file or (record.get("gguf") or {}).get("file")
        if not file or not (folder / file).is_file() or not str(file).endswith(".gguf"):
            raise TuneforgeError(f"--export {path}: the GGUF file {file} is missing from {folder}")
        key = f"gguf-{quant}"
    else:
        file, key = None, "merged"
    tolerance = TOLERANCES.get(key)
    if tolerance is None:
        raise TuneforgeError(f"--export {path}: no tolerance known for {key} exports")
    identity = {
        "path": str(folder.resolve()),
        "format": fmt,
        "quant": quant,
        "file": file,
        "export_json_sha256": sha256_path(record_file),
        "exported": record.get("created"),
    }
    return ExportTarget(fmt, str(path), tolerance, identity, folder=folder, file=file)


@dataclass
class ServerTarget(Target):
    url: str = ""
    api_key: str | None = None
    model: str = ""

    def answers(self, run: Run, inputs: Inputs, reference: Answers) -> tuple[Answers, dict]:
        n = run.task.answer_tokens(run.recipe) if inputs.kind != "labels" else 0
        if inputs.kind == "labels":
            probs, found = [], set()
            for i in range(0, len(inputs.texts), CLASSIFY_CHUNK):
                body = {"model": self.model, "input": inputs.texts[i : i + CLASSIFY_CHUNK]}
                for item in self.call("POST", "/v1/classify", body)["data"]:
                    found.update(item["probabilities"])
                    probs.append(
                        [item["probabilities"].get(lab, math.nan) for lab in inputs.labels]
                    )
            return Answers(probabilities=np.array(probs)), {"labels": sorted(found)}
        texts, stopped, counts = [], [], []
        for i in range(len(inputs.references)):
            if inputs.kind == "chat":
                body = {"model": self.model, "messages": inputs.chats[i], "temperature": 0}
                reply = self.call("POST", "/v1/chat/completions", {**body, "max_tokens": n})
                content = reply["choices"][0]["message"]["content"] or ""
            else:
                body = {"model": self.model, "prompt": inputs.texts[i], "temperature": 0}
                reply = self.call("POST", "/v1/completions", {**body, "max_tokens": n})
                content = reply["choices"][0]["text"]
            texts.append(content)
            stopped.append(reply["choices"][0]["finish_reason"] == "stop")
            counts.append(int(reply["usage"]["prompt_tokens"]))
        return Answers(prompt_tokens=counts, texts=texts, stopped=stopped), {}

    def call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        return _http(self.url, method, path, body, self.api_key)


def server_target(url: str, api_key: str | None, run: Run) -> ServerTarget:
    """A live `tuneforge serve` of this run's task, ready, reached before any model is loaded."""
    url = url.rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise TuneforgeError(
            f"--server {url}: not an http(s) URL", hint="e.g. --server http://127.0.0.1:8000"
        )
    stats = _http(url, "GET", "/stats", None, api_key)
    if stats.get("task") != run.meta["task"]:
        raise TuneforgeError(
            f"--server {url} serves a {stats.get('task')} model ({stats.get('model')}); "
            f"{run.path} is a {run.meta['task']} run",
            hint="point --server at `tuneforge serve` of this run",
        )
    if stats.get("state") != "ready":
        raise TuneforgeError(f"--server {url} is not ready (state: {stats.get('state')})")
    identity = {"url": url, "model": stats.get("model"), "task": stats.get("task")}
    precision = stats.get("precision", "fp32")
    identity["precision"] = precision
    return ServerTarget(
        "server",
        url,
        TOLERANCES["server-bf16" if precision == "bf16" else "server"],
        identity,
        url=url,
        api_key=api_key,
        model=stats["model"],
    )


def _http(url: str, method: str, path: str, body: dict | None, api_key: str | None) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        message = _error_message(e)
        if e.code == 401:
            raise TuneforgeError(
                f"--server {url}: the server refused the request ({message})",
                hint="pass its key with --api-key (or TUNEFORGE_API_KEY)",
            ) from None
        raise TuneforgeError(
            f"--server {url}: {method} {path} answered {e.code}: {message}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TuneforgeError(
            f"--server {url}: cannot reach it ({reason})",
            hint="start it with `tuneforge serve RUN` and check the address",
        ) from None
    except json.JSONDecodeError:
        raise TuneforgeError(
            f"--server {url}: {path} did not answer JSON; is it a tuneforge server?"
        ) from None


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(e.read())
        return str((payload.get("error") or {}).get("message") or payload.get("detail") or payload)
    except (json.JSONDecodeError, AttributeError, OSError):
        return e.reason or "no details"


# --------------------------------------------------------------------------------------------------
# Metrics and the comparison


def task_metrics(kind: str, inputs: Inputs, answers: Answers) -> dict[str, float | None]:
    if kind == "labels":
        assert answers.probabilities is not None
        labels_ok = ~np.isnan(answers.probabilities).any(axis=1)
        return {"accuracy": _accuracy(answers, inputs) if labels_ok.all() else None}
    if kind == "chat":
        scores = generation_metrics(answers.texts or [], inputs.references)
        return {k: scores.get(k) for k in ("exact_match", "rouge_l", "first_line_exact_match")}
    scored = [x for row in answers.scored or [] for x in row]
    return {"loss": -float(np.mean(scored)) if scored else None}


def _accuracy(answers: Answers, inputs: Inputs) -> float:
    assert answers.probabilities is not None
    predicted = [inputs.labels[int(i)] for i in answers.probabilities.argmax(-1)]
    return float(np.mean([p == t for p, t in zip(predicted, inputs.references, strict=True)]))


def _stops(answers: Answers) -> dict[str, Any]:
    if answers.stopped is None:
        return {}
    return {"stopped": sum(answers.stopped) / max(len(answers.stopped), 1)}


@dataclass
class Checks:
    """One target's checks: what was measured, the run's figure, the limit, passed or not."""

    tolerance: Tolerance
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, run: Any, value: Any, limit: str, passed: bool, note: str = ""):
        self.items.append(
            {
                "check": name,
                "run": run,
                "target": value,
                "limit": limit,
                "passed": bool(passed),
                "note": note,
            }
        )

    def share(self, name: str, same: int, n: int, note: str = "") -> None:
        """`same` of `n` rows agree: at least the tolerance's agreement share must."""
        limit = self.tolerance.agreement
        self.add(
            name, None, same / n, f">= {limit:g}", same / n >= limit, note or f"{same}/{n} rows"
        )


def compare_target(
    target: Target, kind: str, inputs: Inputs, reference: Answers, answers: Answers, extra: dict
) -> dict[str, Any]:
    """The target's checks, metrics and drift against the reference; passed when every check is."""
    checks = Checks(target.tolerance)
    _tokenisation(checks, kind, reference, answers, extra)
    if kind == "labels":
        _label_names(checks, target, inputs, extra)
    if answers.stopped is not None and reference.stopped is not None:
        same = sum(a == b for a, b in zip(answers.stopped, reference.stopped, strict=True))
        n = len(answers.stopped)
        ran = f"{sum(reference.stopped)}/{n} stopped, target {sum(answers.stopped)}/{n}"
        checks.share("stop behaviour", same, n, f"{same}/{n} rows end the same way ({ran})")
    metrics = (
        {} if kind == "text" and answers.scored is None else task_metrics(kind, inputs, answers)
    )
    _metric_checks(checks, kind, task_metrics(kind, inputs, reference), metrics)
    drift = (
        _probability_drift(checks, reference, answers)
        if kind == "labels"
        else _answer_drift(checks, kind, reference, answers)
    )
    return {
        "kind": target.kind,
        "target": target.name,
        "identity": target.identity,
        "tolerance": asdict(target.tolerance),
        "metrics": metrics,
        "drift": {**drift, **_stops(answers)},
        "checks": checks.items,
        "passed": all(c["passed"] for c in checks.items),
    }


def _tokenisation(
    checks: Checks, kind: str, reference: Answers, answers: Answers, extra: dict
) -> None:
    ref_ids = reference.prompt_ids or []
    if answers.prompt_ids is not None:
        same = sum(a == b for a, b in zip(answers.prompt_ids, ref_ids, strict=True))
        n = len(ref_ids)
        checks.add(
            "prompt token ids", None, same / n, "= 1", same == n, f"{same}/{n} rows identical"
        )
    elif answers.prompt_tokens is not None:
        same = sum(a == len(b) for a, b in zip(answers.prompt_tokens, ref_ids, strict=True))
        n = len(ref_ids)
        note = f"{same}/{n} rows (the server reports token counts, not ids)"
        checks.add("prompt token count", None, same / n, "= 1", same == n, note)
    if "tokenizer" in extra:
        tok = extra["tokenizer"]
        words = {True: "same", False: "different"}
        checks.add(
            "tokenizer on probe texts",
            None,
            words[tok["tokenizer_match"]],
            "same",
            tok["tokenizer_match"],
        )
        if kind == "chat":
            match = tok["chat_template_match"]
            checks.add("chat template", None, words[match], "same", match)


def _label_names(checks: Checks, target: Target, inputs: Inputs, extra: dict) -> None:
    labels = extra.get("labels")
    if labels is None:
        return
    # an export's head keeps the run's order (id2label); the server names them in a mapping
    ok = (
        sorted(labels) == sorted(inputs.labels)
        if target.kind == "server"
        else labels == inputs.labels
    )
    checks.add("label names", ", ".join(inputs.labels), ", ".join(map(str, labels)), "same", ok)


def _metric_checks(checks: Checks, kind: str, ref: dict, metrics: dict) -> None:
    tol = checks.tolerance
    for name in {"labels": ("accuracy",), "chat": ("exact_match", "rouge_l"), "text": ("loss",)}[
        kind
    ]:
        if name not in metrics:
            continue
        a, b = ref.get(name), metrics.get(name)
        limit = tol.loss if name == "loss" else tol.metric
        ok = a is not None and b is not None and abs(a - b) <= limit + 1e-9
        checks.add(name, a, b, f"|Δ| <= {limit:g}", ok)


def _probability_drift(checks: Checks, reference: Answers, answers: Answers) -> dict[str, Any]:
    p, q = reference.probabilities, answers.probabilities
    assert p is not None and q is not None
    if np.isnan(q).any():  # a label the target does not know: no comparable probabilities
        drift = {"max_abs_prob_diff": None, "mean_abs_prob_diff": None, "label_agreement": 0.0}
    else:
        diff = np.abs(p - q)
        drift = {
            "max_abs_prob_diff": float(diff.max()),
            "mean_abs_prob_diff": float(diff.mean()),
            "label_agreement": float(np.mean(p.argmax(-1) == q.argmax(-1))),
        }
    n = len(p)
    checks.share("label agreement", round(drift["label_agreement"] * n), n)
    largest, limit = drift["max_abs_prob_diff"], checks.tolerance.probability
    mean = drift["mean_abs_prob_diff"]
    note = f"mean {mean:.3g}" if mean is not None else "labels differ"
    checks.add(
        "max |Δp|", None, largest, f"<= {limit:g}", largest is not None and largest <= limit, note
    )
    return drift


def _answer_drift(
    checks: Checks, kind: str, reference: Answers, answers: Answers
) -> dict[str, Any]:
    texts, ref_texts = answers.texts or [], reference.texts or []
    same = sum(a == b for a, b in zip(texts, ref_texts, strict=True))
    drift: dict[str, Any] = {"identical_answers": same / len(ref_texts)}
    if answers.token_ids is not None:
        pairs = zip(answers.token_ids, reference.token_ids or [], strict=True)
        diverging = [f for f in (_first_divergence(a, b) for a, b in pairs) if f is not None]
        drift["diverging_rows"] = len(diverging)
        drift["first_divergence_min"] = min(diverging) if diverging else None
        drift["first_divergence_mean"] = float(np.mean(diverging)) if diverging else None
    n, limit = len(ref_texts), checks.tolerance.answers
    note = f"{same}/{n} rows"
    if drift.get("first_divergence_mean") is not None:
        note += f"; the others part at answer token {drift['first_divergence_mean']:.1f} on average"
    if limit == 0:
        note += " (reported, not gated for this format)"
    name = "identical answers" if kind == "chat" else "identical continuations"
    checks.add(name, None, same / n, f">= {limit:g}", same / n >= limit, note)
    if answers.scored is not None:
        deltas = [
            abs(a - b)
            for ra, rb in zip(answers.scored, reference.scored or [], strict=True)
            for a, b in zip(ra, rb, strict=True)
        ]
        mean = float(np.mean(deltas)) if deltas else 0.0
        drift.update(
            mean_abs_logprob_diff=mean,
            max_abs_logprob_diff=float(max(deltas)) if deltas else 0.0,
            scored_tokens=len(deltas),
        )
        limit = checks.tolerance.logprob
        note = f"over {len(deltas)} tokens of the run's own greedy answers"
        checks.add("mean |Δ log p|", None, mean, f"<= {limit:g}", mean <= limit, note)
    return drift


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first answer token where two greedy answers differ (None: identical)."""
    if a == b:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def failures(result: dict[str, Any]) -> Iterator[str]:
    """'target: check (value vs limit)' for each check that failed: the CLI's exit-1 message."""
    for target in result["targets"]:
        for c in target["checks"]:
            if c["passed"] is False:
                yield f"{target['target']}: {c['check']} {_short(c['target'])} (limit {c['limit']})"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
