"""`tuneforge plan`: what a recipe will cost before any training starts.

Parameters come from the real architecture with the recipe's method applied (built on the meta
device: exact counts, no weights read). The dataset is the task's own tokenisation (`prepare`), so
examples and tokens are what training will see. Memory is an estimate, broken into the parts a
user can act on: weights, gradients, AdamW state and activations. The activation formula counts
what autograd keeps for a Llama-style decoder (measured tensor by tensor with
`saved_tensors_hooks`, see :func:`saved_activation_bytes`), for the worst batch: batch_size rows
padded to the longest example (classification, sft) or a full block (pretrain). Time per epoch is
measured, not modelled: a few real optimiser steps on real batches on this machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    set_seed,
)

from tuneforge import cpu_bf16, devices, kernels
from tuneforge.answer_forward import model_inputs
from tuneforge.config import Recipe, apply_override, load_recipe, validate_recipe
from tuneforge.errors import CheckFailed
from tuneforge.evaluation.intervals import too_small
from tuneforge.evaluation.language_model import padding_collator
from tuneforge.methods import apply_method, count_parameters, enable_gradient_checkpointing
from tuneforge.models import load_tokenizer, quiet_transformers
from tuneforge.precision import for_training
from tuneforge.progress import status
from tuneforge.runs.parents import base_source
from tuneforge.tasks import get_task
from tuneforge.training import launch
from tuneforge.training.samplers import SortedBatchesSampler

GB = 1024**3
BYTES_PER_VALUE = {"fp32": 4, "bf16": 2, "fp16": 2}
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------------------------
# The arithmetic (pure functions: unit-tested against figures written out by hand)


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-style decoder that activation memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> DecoderShape:
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
        )


@dataclass(frozen=True)
class Workload:
    """One training micro-batch: `batch_size` rows of `seq_len` tokens (padded).

    `logit_positions` is how many positions per row get a `logit_width`-wide output row: every
    position for pretrain, the label positions for sft, every position with a tiny width (the
    number of labels) for classification, whose head then pools one position.
    """

    batch_size: int
    seq_len: int
    logit_positions: int
    logit_width: int
    padded: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """What trains, as far as activation memory is concerned."""

    method: str  # lora | full | freeze
    lora_r: int = 16
    lora_dropout: float = 0.0
    lora_linears: int = 7  # adapted linear layers per decoder block
    trainable_layers: int = 0  # method: freeze
    head_trainable: bool = True  # classification head (or an untied lm_head under full/freeze)


def layer_values(shape: DecoderShape, spec: MethodSpec, first: bool = False) -> float:
    """Values (floats) autograd keeps per token for one decoder block.

    Full fine-tuning (and the trainable blocks of `freeze`): each RMSNorm keeps its input, 1/rms,
    the normalised value (for the weight's gradient) and its output (the next linear's input): 3h+1;
    attention keeps q, k and v (k and v repeated to all heads, as transformers does for grouped
    queries), its output and the log-sum-exp per head: 4*heads*head_dim + heads; the MLP keeps the
    gate output, its SiLU, the up projection and their product: 4i. With LoRA the frozen norm
    weights need no normalised value (2h+1 each), every adapted linear adds its rank-r
    intermediate, and adapter dropout keeps one-byte masks and copies of the adapters' inputs.
    The first block's input (the frozen embeddings' output) needs no gradient, so its first norm
    keeps only its output.
    """
    h, i, attn = shape.hidden, shape.intermediate, shape.heads * shape.head_dim
    attention = 4 * attn + shape.heads
    mlp = 4 * i
    if spec.method == "lora":
        norms = 2 * (2 * h + 1)
        adapters = spec.lora_linears * spec.lora_r
        dropout = 0.0
        if spec.lora_dropout > 0:
            # CheapDropout keeps a bool mask (a quarter of a value) per element of each adapted
            # input, q, k, v, o, gate, up (hidden wide) and down (intermediate wide); none for
            # the first block's q/k/v, whose input needs no gradient. The adapters' own copies
            # of their dropped-out inputs add 4h: measured with saved_tensors_hooks on the tiny
            # Llama of the tests (some copies replace inputs kept anyway without dropout).
            # Scaled by the share of linears adapted.
            masks = 0.25 * ((3 * h if first else 6 * h) + i)
            dropout = (masks + 4 * h) * spec.lora_linears / 7
        first_fix = -(h + 1) if first else 0
        return norms + attention + mlp + adapters + dropout + first_fix
    norms = 2 * (3 * h + 1)
    first_fix = -(h + 1) if first and spec.method == "freeze" else 0
    return norms + attention + mlp + first_fix


def activation_values(
    shape: DecoderShape,
    work: Workload,
    spec: MethodSpec,
    checkpointing: bool = False,
    transient: bool = True,
) -> float:
    """Values kept for the backward pass of one micro-batch, at its peak (start of backward).

    With `transient=False`, only what autograd saves (what :func:`saved_activation_bytes`
    measures): the logits themselves and their gradient, alive only around the loss, are left out.
    """
    b, s = work.batch_size, work.seq_len
    tokens = b * s
    h = shape.hidden
    if spec.method == "freeze":
        n_trainable = min(spec.trainable_layers, shape.layers)
    else:
        n_trainable = shape.layers
    embeddings_train = spec.method == "full"
    per_layer = [
        layer_values(shape, spec, first=(k == 0 and not embeddings_train))
        for k in range(n_trainable)
    ]
    # with checkpointing each block keeps only its input; one block is recomputed at a time
    blocks = n_trainable * h + max(per_layer, default=0) if checkpointing else sum(per_layer)
    norm_trains = spec.method in ("full", "freeze")
    final_norm = (h + 1) + (h if norm_trains else 0) + (h if spec.head_trainable else 0)
    ids = 2 + 2  # int64 input ids and labels, counted in 4-byte values
    # logits: the saved log-softmax, the logits themselves and their gradient at backward start
    logits = (3 if transient else 1) * b * work.logit_positions * work.logit_width
    mask = 2 * b * s * s if work.padded else 0  # additive attention mask (float), shared by blocks
    rope = 2 * shape.head_dim * s  # cos and sin, shared by blocks and rows
    return tokens * (blocks + final_norm + ids) + logits + mask + rope


@dataclass
class Memory:
    """Estimated peak training memory, in bytes, by what it is for."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int = 0  # the process itself: Python, torch, libraries (measured)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def times(self, n: int) -> Memory:
        """n processes on one machine (training.processes): each holds all of it."""
        return Memory(**{k: v * n for k, v in asdict(self).items()})


def estimate_memory(
    total_params: int,
    trainable_params: int,
    shape: DecoderShape,
    work: Workload,
    spec: MethodSpec,
    *,
    checkpointing: bool = False,
    precision: str = "fp32",
    quantized_base: bool = False,
    bf16_base: bool = False,
    runtime: int = 0,
) -> Memory:
    """fp32 master weights, one fp32 gradient and two fp32 AdamW moments per trainable parameter.

    Mixed precision halves activations; the master weights stay fp32. A 4-bit base (QLoRA)
    stores frozen weights at about half a byte each, a bf16 base (bf16 on a CPU) at two bytes.
    """
    frozen = total_params - trainable_params
    per_frozen = 0.5 if quantized_base else 2 if bf16_base else 4
    weights = 4 * trainable_params + int(frozen * per_frozen)
    values = activation_values(shape, work, spec, checkpointing)
    return Memory(
        weights=int(weights),
        gradients=4 * trainable_params,
        optimizer=8 * trainable_params,
        activations=int(math.ceil(values * BYTES_PER_VALUE[precision])),
        runtime=runtime,
    )


# --------------------------------------------------------------------------------------------------
# Measuring (used to validate the formula, and by `plan` for the time per epoch)


def saved_activation_bytes(model, batch: dict) -> tuple[int, Any]:
    """Bytes of every distinct tensor autograd saves in one forward pass (parameters excluded).

    This is exactly the memory activations hold until backward; returns (bytes, loss).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    return sum(seen.values()), out.loss


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every few ms)."""

    def __init__(self, interval: float = 0.002) -> None:
        self._proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def available_memory() -> int:
    """Memory a new job can use: the first GPU's free memory, else available RAM."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(0)[0])
    return int(psutil.virtual_memory().available)


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Suggestion:
    change: str  # what to change, in words
    overrides: list[str]  # the --set options that make it
    memory: int  # estimated peak with the change
    fits: bool


@dataclass
class Plan:
    recipe: str
    task: str
    method: str
    parameters: dict[str, int]
    dataset: dict[str, Any]
    batch: dict[str, Any]
    memory: Memory
    budget: int
    budget_source: str
    fits: bool
    timing: dict[str, Any] | None = None
    auto_batch_size: int | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d


@dataclass
class _Context:
    """Everything the estimate needs besides the knobs a suggestion may turn."""

    recipe: Recipe
    config: Any  # the model's transformers config (num_labels set for classification)
    shape: DecoderShape
    counts: dict[str, tuple[int, int]]  # method -> (trainable, total)
    longest: int  # longest training example in tokens (after the task's truncation)
    max_trained: int  # sft: most label positions in one example
    logit_width: int
    runtime: int
    rows_per_example: int = 1  # sequences one example runs as (a preference pair: 2)


def plan(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    *,
    auto_batch_size: bool = False,
    memory_budget_gb: float | None = None,
    steps: int = 3,
) -> Plan:
    """Count, estimate and time a recipe; raises CheckFailed (exit 1) when it cannot fit."""
    recipe = _load(recipe_path, overrides)
    task = get_task(recipe.task)
    source = base_source(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
    task.check_base_model(source, recipe)
    tokenizer = load_tokenizer(source.path, trust_remote_code=recipe.trust_remote_code)
    runtime = psutil.Process().memory_info().rss
    prepared, rows = task.planning_view(task.prepare(recipe, tokenizer, Path(recipe_path).parent))
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    dataset, max_trained = _dataset_summary(recipe, prepared, lengths)
    if rows > 1:  # a preference pair runs as its two sequences
        dataset.update(examples=len(lengths) // rows, sequences_per_example=rows)
    ctx = _context(recipe, source.path, prepared, lengths, max_trained, runtime)
    ctx.rows_per_example = rows
    trainable, total = _counts(ctx, recipe)

    budget, budget_source = _budget(memory_budget_gb)
    notes = list(ESTIMATE_NOTES)
    small = too_small(len(prepared.splits.validation), recipe.evaluation.detectable_difference)
    if small:
        notes.append(f"validation set: {small}")
    chosen = None
    if auto_batch_size:
        chosen = _auto_batch_size(ctx, budget, budget_source, examples=len(lengths) // rows)
        recipe = ctx.recipe = _with(recipe, f"training.batch_size={chosen}")
        notes.append(
            f"--auto-batch-size: {chosen} is the largest batch size whose estimated peak fits "
            f"the budget (by the estimate, not measured); use --set training.batch_size={chosen}"
        )
    memory = _estimate(ctx, recipe)
    if memory.total > budget:
        raise _does_not_fit(ctx, budget, budget_source)

    timing = _time_epoch(task, source, prepared, recipe, tokenizer, lengths, steps, rows)
    return Plan(
        recipe=recipe.name,
        task=recipe.task,
        method=recipe.method + (" (4-bit base)" if recipe.lora.quantize_base else ""),
        parameters={"total": total, "trainable": trainable},
        dataset=dataset,
        batch=_batch_summary(ctx, recipe),
        memory=memory,
        budget=budget,
        budget_source=budget_source,
        fits=True,
        timing=timing,
        auto_batch_size=chosen,
        notes=notes,
    )


ESTIMATE_NOTES = (
    "memory is an estimate (Llama-style decoder formula, worst batch: longest example x "
    "batch_size); time is measured",
    "activations match what autograd saves within ~2% (SmolLM2-135M, LoRA); the process's "
    "RSS grew 1.4-1.6x that during a real step (backward buffers, allocator): keep headroom",
)


def _load(recipe_path: str | Path, overrides: list[str] | None) -> Recipe:
    """The recipe, with `training.processes: auto` fixed to a number once (so a batch-size
    search keeps it)."""
    recipe = load_recipe(recipe_path, overrides)
    devices.require_hardware_for(recipe)
    if recipe.training.processes == "auto":
        n = launch.resolve(
            "auto",
            recipe.training.batch_size,
            on_gpu=devices.resolve(recipe.device).type == "cuda",
        )
        recipe = _with(recipe, f"training.processes={n}")
    return recipe


def _dataset_summary(recipe: Recipe, prepared, lengths: list[int]) -> tuple[dict[str, Any], int]:
    """The training data as the plan reports it, and (sft, pretrain) the most label positions in
    one example (0 for classification)."""
    dataset: dict[str, Any] = {
        "examples": len(lengths),
        "tokens": int(sum(lengths)),
        "longest": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "validation_examples": len(prepared.validation),
    }
    max_trained = 0
    if "labels" in prepared.train.column_names and recipe.task != "classification":
        trained = [sum(x != -100 for x in row) for row in prepared.train["labels"]]
        max_trained = max(trained)
        dataset["trained_tokens"] = int(sum(trained))
    return dataset, max_trained


def _context(
    recipe: Recipe, path: Path, prepared, lengths: list[int], max_trained: int, runtime: int
) -> _Context:
    """What the estimates share: the architecture's config and shape, and the data's sizes."""
    config = _model_config(path, prepared, recipe)
    return _Context(
        recipe=recipe,
        config=config,
        shape=DecoderShape.from_config(config),
        counts={},
        longest=max(lengths),
        max_trained=max_trained,
        logit_width=config.num_labels if recipe.task == "classification" else config.vocab_size,
        runtime=runtime,
    )


def _budget(memory_budget_gb: float | None) -> tuple[int, str]:
    """(bytes, where the figure comes from): --memory-budget, else what this machine has free."""
    if memory_budget_gb:
        return int(memory_budget_gb * GB), f"--memory-budget {memory_budget_gb:g} GB"
    return available_memory(), _default_budget_name()


def _auto_batch_size(ctx: _Context, budget: int, budget_source: str, examples: int) -> int:
    """--auto-batch-size: the largest batch whose estimate fits; a batch larger than the training
    set is never used in full, so the search stops there."""
    chosen = largest_fitting_batch(ctx, budget, upper=examples)
    if chosen is None:
        raise _does_not_fit(ctx, budget, budget_source, batch_size=1)
    return chosen


def _parallelism(recipe: Recipe) -> tuple[int, int, int]:
    """(world, processes, per-process batch): torchrun's WORLD_SIZE, where batch_size is per
    process, and training.processes, between which the batch is split."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    processes = _processes(recipe)
    return world, processes, recipe.training.batch_size // processes


def _batch_summary(ctx: _Context, recipe: Recipe) -> dict[str, Any]:
    tc = recipe.training
    world, processes, per_process = _parallelism(recipe)
    device = devices.resolve(recipe.device)
    return {
        "batch_size": tc.batch_size,
        "gradient_accumulation_steps": tc.gradient_accumulation_steps,
        "per_process_batch": per_process,
        "processes": world * processes,
        "global_batch": tc.batch_size * tc.gradient_accumulation_steps * world,
        "seq_len": _seq_len(ctx, recipe),
        "gradient_checkpointing": tc.gradient_checkpointing,
        "precision": devices.precision(tc.precision, device, recipe.method),
        # what the CPU offers for bf16, detected and measured (precision: auto decides on it)
        **({"cpu": cpu_bf16.detect().describe()} if device.type == "cpu" else {}),
    }


def _time_epoch(
    task,
    source,
    prepared,
    recipe: Recipe,
    tokenizer,
    lengths: list[int],
    steps: int,
    rows: int = 1,
) -> dict[str, Any]:
    """`measure_steps` on the epoch's own batches, and the time per epoch for one process: the
    measured rate (padded tokens/s) over the tokens of the batches that process computes (a
    batch's cost follows its padded size, and length-sorted batches are much smaller than random
    ones)."""
    tc = recipe.training
    world, processes, per_process = _parallelism(recipe)
    # batches of examples; an example of `rows` sequences (a preference pair) runs all of them
    examples = [max(lengths[i * rows : (i + 1) * rows]) for i in range(len(lengths) // rows)]
    batches = [
        [i * rows + r for i in b for r in range(rows)]
        for b in epoch_batches(examples, per_process, tc, world * processes)
    ]
    timing = measure_steps(
        task, source, prepared, recipe, tokenizer, lengths, batches, steps, processes
    )
    mine = batches[:: world * processes]  # what one process computes: every n-th batch
    epoch_tokens = sum(_padded_tokens(b, lengths) for b in mine)
    timing["micro_batches_per_epoch"] = len(mine)
    timing["optimizer_steps_per_epoch"] = math.ceil(len(mine) / tc.gradient_accumulation_steps)
    timing["padded_tokens_per_epoch"] = epoch_tokens  # per process
    timing["seconds_per_epoch"] = round(epoch_tokens / timing["tokens_per_second"], 1)
    return timing


def _padded_tokens(batch: list[int], lengths: list[int]) -> int:
    """A batch's size padded to its longest example: what its cost follows."""
    return len(batch) * max(lengths[i] for i in batch)


def _default_budget_name() -> str:
    return "free GPU memory" if torch.cuda.is_available() else "available RAM"


def _with(recipe: Recipe, *overrides: str) -> Recipe:
    raw = recipe.to_yaml_dict()
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw)


def _model_config(path: Path, prepared, recipe: Recipe):
    config = AutoConfig.from_pretrained(path, trust_remote_code=recipe.trust_remote_code)
    if recipe.task == "classification":
        config.num_labels = len(prepared.info["labels"])
    return config


def count_on_meta(config, recipe: Recipe, peft_task_type: str) -> tuple[int, int]:
    """(trainable, total) parameters of the architecture with the method applied; no weights read."""
    auto = (
        AutoModelForSequenceClassification
        if recipe.task == "classification"
        else AutoModelForCausalLM
    )
    with torch.device("meta"), quiet_transformers():
        model = auto.from_config(config, trust_remote_code=recipe.trust_remote_code)
        model = apply_method(model, recipe.method, recipe.lora, recipe.freeze, peft_task_type)
    return count_parameters(model)


def _seq_len(ctx: _Context, recipe: Recipe) -> int:
    if recipe.task == "pretrain":
        return recipe.training.max_length  # packed blocks: always full
    return min(ctx.longest, recipe.training.max_length)


def _workload(ctx: _Context, recipe: Recipe, b: int) -> Workload:
    s = _seq_len(ctx, recipe)
    if recipe.task == "sft" and not recipe.training.label_smoothing:
        # logits only where a row's next token is labelled (answer_forward.py): at worst the
        # example with the most trained tokens, in every row
        positions = min(s, max(ctx.max_trained, 1))
    else:
        positions = s
    return Workload(
        batch_size=b * ctx.rows_per_example,
        seq_len=s,
        logit_positions=positions,
        logit_width=ctx.logit_width,
        padded=recipe.task != "pretrain",
    )


def _spec(ctx: _Context, recipe: Recipe) -> MethodSpec:
    targets = recipe.lora.target_modules
    linears = 7 if targets == "all-linear" else sum(t in LORA_LINEARS for t in targets)
    tied = bool(getattr(ctx.config, "tie_word_embeddings", False))
    return MethodSpec(
        method=recipe.method,
        lora_r=recipe.lora.r,
        lora_dropout=recipe.lora.dropout,
        lora_linears=linears,
        trainable_layers=recipe.freeze.trainable_layers,
        head_trainable=recipe.task == "classification"
        or recipe.method == "full"
        or (recipe.method == "freeze" and not tied),
    )


def _counts(ctx: _Context, recipe: Recipe) -> tuple[int, int]:
    """(trainable, total) for the recipe's method, counted once per method."""
    if recipe.method not in ctx.counts:
        peft_task_type = get_task(recipe.task).peft_task_type
        ctx.counts[recipe.method] = count_on_meta(ctx.config, recipe, peft_task_type)
    return ctx.counts[recipe.method]


def _processes(recipe: Recipe) -> int:
    """Processes sharing this machine's memory (`auto` is fixed to a number in `plan`)."""
    return launch.wanted(recipe.training)


def _estimate(ctx: _Context, recipe: Recipe) -> Memory:
    """Peak memory of training; with training.processes, all the processes on this machine."""
    n = _processes(recipe)
    trainable, total = _counts(ctx, recipe)
    device = devices.resolve(recipe.device)
    precision = devices.precision(recipe.training.precision, device, recipe.method)
    return estimate_memory(
        total,
        trainable,
        ctx.shape,
        _workload(ctx, recipe, recipe.training.batch_size // n),
        _spec(ctx, recipe),
        checkpointing=recipe.training.gradient_checkpointing,
        precision=precision,
        quantized_base=bool(recipe.lora.quantize_base) and recipe.method == "lora",
        bf16_base=precision == "bf16" and device.type == "cpu",
        runtime=ctx.runtime,
    ).times(n)


def largest_fitting_batch(ctx: _Context, budget: int, upper: int | None = None) -> int | None:
    """The largest batch size whose estimate fits (memory grows with the batch: binary search).

    With training.processes n, batch sizes are multiples of n (each process takes an equal share).
    """
    recipe = ctx.recipe
    n = _processes(recipe)

    def fits(k: int) -> bool:
        return _estimate(ctx, _with(recipe, f"training.batch_size={k * n}")).total <= budget

    upper = (upper or 4096) // n
    if upper < 1 or not fits(1):
        return None
    lo, hi = 1, 2
    while hi <= upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * n


def suggestions(ctx: _Context, budget: int) -> list[Suggestion]:
    """Changes that reduce memory, each with its estimate, lowest estimate first."""
    recipe = ctx.recipe
    tc = recipe.training
    out: list[Suggestion] = []

    def add(change: str, *overrides: str) -> None:
        memory = _estimate(ctx, _with(recipe, *overrides)).total
        out.append(Suggestion(change, list(overrides), memory, memory <= budget))

    n = _processes(recipe)
    if recipe.method != "lora":
        add("train LoRA adapters instead of the weights", "method=lora")
    if n > 1:
        add("one training process (each process holds its own copy of the model)",
            "training.processes=1")  # fmt: skip
    if tc.batch_size > n:
        global_micro = tc.batch_size * tc.gradient_accumulation_steps
        smaller = largest_fitting_batch(ctx, budget, upper=tc.batch_size - 1) or n
        while tc.batch_size % smaller or smaller % n:  # keep the global batch exactly
            smaller -= 1
        accum = global_micro // smaller
        add(
            f"smaller batch, same global batch ({global_micro} examples per update)",
            f"training.batch_size={smaller}",
            f"training.gradient_accumulation_steps={accum}",
        )
    if not tc.gradient_checkpointing:
        add(
            "recompute activations in backward (about 30% slower)",
            "training.gradient_checkpointing=true",
        )
    current = _seq_len(ctx, recipe)
    if current > 8:
        length = current
        while (
            length > 8
            and _estimate(ctx, _with(recipe, f"training.max_length={length}")).total > budget
        ):
            length = max(8, length // 2)
        if length < current:
            add(
                f"shorter inputs (longer examples are cut to {length} tokens)",
                f"training.max_length={length}",
            )
    return sorted(out, key=lambda s: s.memory)


def _does_not_fit(
    ctx: _Context, budget: int, budget_source: str, batch_size: int | None = None
) -> CheckFailed:
    recipe = (
        ctx.recipe if batch_size is None else _with(ctx.recipe, f"training.batch_size={batch_size}")
    )
    ctx = replace(ctx, recipe=recipe)
    memory = _estimate(ctx, recipe)
    lines = [
        f"{recipe.name}: estimated peak memory {fmt_bytes(memory.total)} does not fit in "
        f"{fmt_bytes(budget)} ({budget_source}): weights {fmt_bytes(memory.weights)}, gradients "
        f"{fmt_bytes(memory.gradients)}, optimiser {fmt_bytes(memory.optimizer)}, activations "
        f"{fmt_bytes(memory.activations)}, runtime {fmt_bytes(memory.runtime)}"
    ]
    found = suggestions(ctx, budget)
    if found:
        lines.append("changes that reduce it (estimated peak each):")
        for s in found:
            sets = " ".join(f"--set {o}" for o in s.overrides)
            mark = "fits" if s.fits else "still too big"
            lines.append(f"  {fmt_bytes(s.memory):>9}  {s.change}: {sets} ({mark})")
    return CheckFailed(
        "\n".join(lines),
        hint="apply one or more of these (or give a larger --memory-budget if this machine has more)",
    )


def epoch_batches(lengths: list[int], per_process: int, tc, processes: int = 1) -> list[list[int]]:
    """The first epoch's micro-batches (training-set indices) in the order training draws them:
    tuneforge's length-sorted batches when `group_by_length` (one sorted group per step, shared
    by the processes), else a seeded random order. Process r computes batches r, r+n, r+2n..."""
    if tc.group_by_length:
        group = per_process * tc.gradient_accumulation_steps * processes
        order = list(SortedBatchesSampler(lengths, group, tc.seed, tc.length_jitter))
    else:
        generator = torch.Generator().manual_seed(tc.seed)
        order = torch.randperm(len(lengths), generator=generator).tolist()
    return [order[i : i + per_process] for i in range(0, len(order), per_process)]


def measure_steps(
    task,
    source,
    prepared,
    recipe: Recipe,
    tokenizer,
    lengths: list[int],
    batches: list[list[int]],
    steps: int = 3,
    processes: int = 1,
) -> dict[str, Any]:
    """Padded tokens per second from `steps` real optimiser steps, after one warm-up step.

    The batches are the epoch's own (`epoch_batches`): the warm-up is the epoch's first (with
    length-sorted batches, the longest), the timed ones are spread over the epoch's batch sizes
    (quantiles), so the rate holds for the whole epoch. The task's collator and model, the
    recipe's method, AdamW as the Trainer uses it; with training.processes, one process's share of
    the batch at one process's thread count. Also reports the process's peak RSS growth over those
    steps (a real measurement to hold the estimate against).
    """
    device = devices.resolve(recipe.device)
    set_seed(recipe.training.seed)
    model = _model_for_timing(task, source, prepared, recipe, tokenizer, device)
    collate = task.collator(tokenizer) or padding_collator(tokenizer)
    model.train()
    step = _training_step(model, recipe, device, task.reference_passes(recipe))
    columns = prepared.train.column_names

    def batch(idx: list[int]) -> dict:
        return collate([{c: prepared.train[i][c] for c in columns} for i in idx])

    timed = [batch(batches[k]) for k in _timed_batches(batches, lengths, steps)]
    threads = torch.get_num_threads()
    if processes > 1:
        torch.set_num_threads(max(1, launch.cores() // processes))
    message = f"Timing {steps} training steps (after 1 warm-up) at batch size {len(batches[0])}"
    try:
        with status(message), PeakRss() as rss:
            step(batch(batches[0]))
            devices.synchronize(device)
            t0 = time.perf_counter()
            for b in timed:
                step(b)
            devices.synchronize(device)
            seconds = time.perf_counter() - t0
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    tokens = sum(int(b["input_ids"].numel()) for b in timed)
    return {
        "steps_timed": steps,
        "seconds_per_micro_batch": round(seconds / steps, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "measured_rss_growth": rss.growth,
        "threads": used,
    }


def _model_for_timing(task, source, prepared, recipe: Recipe, tokenizer, device):
    """The task's model with the recipe's method applied, on `device`, as training builds it."""
    with status("Building the model for a few timed steps"):
        model = task.build_model(source, prepared, recipe, tokenizer)
        model = apply_method(
            model, recipe.method, recipe.lora, recipe.freeze, task.peft_task_type, device
        )
        model = devices.place(model, device)
        if recipe.training.gradient_checkpointing:
            enable_gradient_checkpointing(model, recipe.method)
        for_training(model, recipe, device)
        kernels.for_training(model, recipe, device)
    return model


def _training_step(
    model, recipe: Recipe, device, reference_passes: int = 0
) -> Callable[[dict], float]:
    """One optimiser step on a batch, as the Trainer runs it (AdamW, autocast at the recipe's
    precision, sft batches through `model_inputs`); returns the batch's loss. With
    `reference_passes`, the batch also goes through the reference model without gradients first
    (preference tuning: the adapter-off model, or a frozen copy of the same size)."""
    tc = recipe.training
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        devices.precision(tc.precision, device, recipe.method)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)

    def step(b: dict) -> float:
        b = devices.to_device(b, device)
        for _ in range(reference_passes):
            with torch.no_grad(), _adapter_off(model):
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        with (
            model_inputs(model, b) as inputs,  # as the Trainer runs it
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _adapter_off(model):
    """The reference's forward costs what the model's costs with its adapter off."""
    return (
        model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    )


def _timed_batches(batches: list[list[int]], lengths: list[int], steps: int) -> list[int]:
    """`steps` batches (indices into `batches`) at evenly spaced quantiles of their padded sizes,
    the first batch (the warm-up) left out unless it is the only one."""
    sizes = [_padded_tokens(b, lengths) for b in batches]
    rest = sorted(range(1, len(batches)), key=lambda k: sizes[k]) or [0]
    return [rest[min(len(rest) - 1, int((q + 0.5) * len(rest) / steps))] for q in range(steps)]


def fmt_bytes(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.2f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MB"
    return f"{n / 1024:.1f} KB"


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def describe(p: Plan) -> list[str]:
    """The plan as plain lines for the terminal."""
    m, b, d = p.memory, p.batch, p.dataset
    pct = 100 * p.parameters["trainable"] / p.parameters["total"]
    lines = [
        f"Plan for {p.recipe} ({p.task}, method {p.method})",
        f"  parameters       {p.parameters['total']:,} total, {p.parameters['trainable']:,} "
        f"trainable ({pct:.2f}%)",
        f"  training data    {d['examples']:,} examples, {d['tokens']:,} tokens "
        f"(mean {d['mean_tokens']}, longest {d['longest']})"
        + (f", {d['trained_tokens']:,} trained" if "trained_tokens" in d else "")
        + (
            f"; each example runs as {d['sequences_per_example']} sequences (chosen, rejected)"
            if d.get("sequences_per_example", 1) > 1
            else ""
        ),
        f"  batch            {b['per_process_batch']} per process x {b['gradient_accumulation_steps']} "
        f"accumulation x {b['processes']} process(es) = global batch {b['global_batch']}; "
        f"worst case {b['seq_len']} tokens per row",
        f"  options          precision {b['precision']}, gradient checkpointing "
        f"{'on' if b['gradient_checkpointing'] else 'off'}",
        *([f"  cpu              {b['cpu']}"] if "cpu" in b else []),
        "  peak memory (estimate)",
        f"    weights        {fmt_bytes(m.weights):>10}",
        f"    gradients      {fmt_bytes(m.gradients):>10}",
        f"    optimiser      {fmt_bytes(m.optimizer):>10}  (AdamW: 2 fp32 moments per trainable "
        "parameter)",
        f"    activations    {fmt_bytes(m.activations):>10}",
        f"    runtime        {fmt_bytes(m.runtime):>10}  (this process before the model: Python, "
        "torch, libraries)",
        f"    total          {fmt_bytes(m.total):>10}  of {fmt_bytes(p.budget)} ({p.budget_source}): "
        + ("fits" if p.fits else "does NOT fit"),
    ]
    if p.timing:
        t = p.timing
        lines += [
            f"  time (measured)  {t['seconds_per_micro_batch']:.2f} s per batch of "
            f"{b['per_process_batch']} ({t['tokens_per_second']:.0f} tokens/s incl. padding, "
            f"{t['steps_timed']} steps after 1 warm-up, {t['threads']} threads)",
            f"    per epoch      {fmt_seconds(t['seconds_per_epoch'])} "
            f"({t['micro_batches_per_epoch']} batches, {t['optimizer_steps_per_epoch']} optimiser "
            "steps)",
            f"    measured RSS growth over the timed steps: {fmt_bytes(t['measured_rss_growth'])} "
            "(one process; the warm-up is the epoch's first batch)",
        ]
    lines += [f"  note: {n}" for n in p.notes]
    if p.auto_batch_size is not None:
        lines.append(f"Use: --set training.batch_size={p.auto_batch_size}")
    return lines
