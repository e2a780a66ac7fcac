"""The recipe: one typed, validated description of a fine-tuning job.

A recipe is YAML on disk and a :class:`Recipe` in memory. Validation errors name the YAML file, the
field path and (where known) the line, and unknown keys get a "did you mean" hint, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneforge.errors import TuneforgeError, did_you_mean

TaskName = Literal["classification", "sft", "pretrain", "preference"]
MethodName = Literal["lora", "full", "freeze"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the examples are and which columns hold what."""

    train: Path = Field(
        description="Training data: CSV, JSONL, Parquet or a folder saved by `datasets`."
    )
    validation: Path | None = Field(
        None, description="Validation data used during training; or set `validation_split`."
    )
    test: Path | None = Field(
        None, description="Held-out test data, scored once at the end for base and tuned model."
    )
    validation_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Fraction of `train` held out (seeded, stratified) when there is no file.",
    )
    text_field: str = Field("text", description="Column with the input text.")
    label_field: str = Field("label", description="Column with the label (classification).")
    messages_field: str = Field(
        "messages", description="sft: column with a chat as a list of {role, content} messages."
    )
    prompt_field: str = Field(
        "prompt", description="sft: column with the prompt (prompt/completion data)."
    )
    completion_field: str = Field(
        "completion", description="sft: column with the answer to learn (prompt/completion data)."
    )
    instruction_field: str = Field(
        "instruction", description="sft: Alpaca-style instruction column."
    )
    input_field: str = Field(
        "input", description="sft: Alpaca-style optional input column, appended to the instruction."
    )
    output_field: str = Field("output", description="sft: Alpaca-style answer column.")
    chosen_field: str = Field(
        "chosen", description="preference (pairwise): column with the preferred answer."
    )
    rejected_field: str = Field(
        "rejected", description="preference (pairwise): column with the answer not preferred."
    )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("set either `validation` (a file) or `validation_split`, not both")
        return self


class LoraConfig(_Strict):
    """Low-rank adapters (PEFT LoRA) on the chosen linear layers."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(
        32, gt=0, description="Scaling numerator: the update is scaled by alpha/r."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="`all-linear` or a list of module names, e.g. [q_proj, v_proj]."
    )
    quantize_base: Literal["4bit"] | None = Field(
        None,
        description="QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes) and train fp32 adapters "
        "on it; needs a CUDA GPU and `pip install bitsandbytes`. `method: qlora` is a shorthand.",
    )


class FreezeConfig(_Strict):
    """Freeze the bottom of the network: train only the top layers and the head."""

    trainable_layers: int = Field(2, ge=0, description="How many top transformer layers to train.")


class TrainingConfig(_Strict):
    """Optimisation settings passed to the transformers Trainer."""

    epochs: float = Field(3, gt=0, description="Number of passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (overrides epochs)."
    )
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        validation_alias=AliasChoices("gradient_accumulation_steps", "grad_accum"),
        description="Micro-batches whose gradients are summed per optimiser update (alias "
        "`grad_accum`); global batch = batch_size x this x number of processes.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's input and recompute the rest in the backward pass: "
        "much less activation memory for about a third more compute (`tuneforge plan` shows both).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 mixed precision on a CUDA GPU that supports it; on a CPU with "
        "native bf16 (AVX512-BF16, AMX) measured faster, bf16 for lora/freeze (the frozen base "
        "stored in bf16, trainable weights fp32); else fp32. Or fp32, or bf16/fp16 mixed precision "
        "(fp32 master weights); fp16 needs a CUDA GPU, bf16 a GPU or a CPU with native bf16 "
        "(elsewhere emulated, about 36x slower than fp32).",
    )
    eval_batch_size: int | None = Field(None, ge=1, description="Batch size for evaluation.")
    max_length: int = Field(
        256, ge=8, description="Longer inputs are truncated to this many tokens."
    )
    seed: int = Field(0, description="Seed for the head initialisation, shuffling and dropout.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (regularisation).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing factor for the loss (regularisation)."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Fraction of steps for linear warm-up."
    )
    lr_scheduler: str = Field(
        "linear", description="transformers scheduler name (linear, cosine...)."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps; default: at the end of every epoch."
    )
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Checkpoint (model, optimiser, scheduler, RNG, data position) every N steps so a killed "
        "run can be resumed with `train --resume`; evaluation then runs every N steps too unless "
        "eval_steps divides N. Default: a checkpoint at every evaluation.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the training loss every N steps.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together: less padding, same data."
    )
    length_jitter: float = Field(
        0.25,
        ge=0,
        description="With group_by_length: each epoch sorts the examples by length times a random "
        "factor in [1, 1 + length_jitter), so a batch's lengths lie within that factor and "
        "batches regroup every epoch. 0: exactly sorted, the least padding, the fastest; 0.25 "
        "and 1: as accurate as random batches over ten seeds of the sentiment recipe, where "
        "0.05 lost 1-2 points (padded tokens per real token there: 1.15 at 0.25, 1.33 at "
        "1, 1.09 at 0.05, 1.88 random; bench/RESULTS.md).",
    )
    padding_free: bool | Literal["auto"] = Field(
        "auto",
        description="sft and pretrain: the sequences of a batch laid end to end in one row, "
        "position ids restarting at each sequence, no padding and no attention between "
        "sequences (pretrain: between documents packed into one block); sft batches then do not "
        "share their prefix. auto: on where training runs on a CUDA GPU, off on a CPU.",
    )
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="Fused GPU kernels: liger = Liger's RMSNorm, SwiGLU, RoPE and (with "
        "padding-free batches) fused linear cross-entropy, on CUDA only (`pip install "
        "tuneforge[liger]`); auto: liger where training runs on CUDA and it is installed; none.",
    )
    compile: bool = Field(
        False, description="torch.compile the model for training (the Trainer's torch_compile)."
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers fed by the Trainer's own integrations: tensorboard (event "
        "files in <run>/tensorboard) and/or mlflow (configured by MLFLOW_TRACKING_URI, "
        "MLFLOW_EXPERIMENT_NAME). The tracker's run name is the tuneforge run id. Default: none.",
    )

    processes: int | Literal["auto"] = Field(
        1,
        description="CPU only: train in this many data-parallel processes of one thread each "
        "(torch.distributed, gloo) instead of one process with that many threads; `auto` = one per "
        "core on a CPU, one process where training runs on a CUDA GPU. Each process takes batch_size / processes examples of every step, so the step and "
        "the results stay those of one process. Small batches of short texts train faster this "
        "way (bench/RESULTS.md); each extra process holds its own copy of the model. On GPUs, use "
        "torchrun or accelerate launch.",
    )

    @field_validator("processes")
    @classmethod
    def _positive_processes(cls, v: Any) -> Any:
        if v != "auto" and v < 1:
            raise ValueError("must be a whole number >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> TrainingConfig:
        if isinstance(self.processes, int) and self.batch_size % self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} does not split across {self.processes} processes: "
                "make it a multiple of training.processes"
            )
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_none(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        return [v] if isinstance(v, str) else v


class EarlyStoppingConfig(_Strict):
    """Which validation metric picks the best checkpoint, and when to stop."""

    metric: str | None = Field(
        None, description="Validation metric to select on (default: the task's main metric)."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement; null: never."
    )
    threshold: float = Field(0.0, ge=0, description="Minimum improvement that counts.")


CheckSeverity = Literal["error", "warning", "info", "off"]


class DataChecksConfig(_Strict):
    """Severity of each `data check` finding; `train` refuses to start on an error.

    The one place the defaults are written: `tuneforge.data.check` takes its own from here.
    """

    parse_errors: CheckSeverity = Field("error", description="Rows that could not be parsed.")
    leakage: CheckSeverity = Field("error", description="Validation/test examples also in train.")
    empty_text: CheckSeverity = Field("error", description="Examples with no text.")
    duplicates: CheckSeverity = Field(
        "warning", description="Exact or normalised duplicates in a split."
    )
    imbalance: CheckSeverity = Field(
        "warning", description="Largest/smallest class above imbalance_ratio."
    )
    short_text: CheckSeverity = Field(
        "warning", description="Texts shorter than short_chars characters."
    )
    long_text: CheckSeverity = Field(
        "warning", description="Texts over 4x the median token length."
    )
    truncation: CheckSeverity = Field(
        "warning", description="Examples longer than training.max_length."
    )
    small_evaluation: CheckSeverity = Field(
        "warning",
        description="Validation/test sets too small to show evaluation.detectable_difference "
        "as significant.",
    )
    imbalance_ratio: float = Field(
        3.0, gt=1, description="Class-count ratio that counts as imbalance."
    )
    short_chars: int = Field(
        3, ge=1, description="Texts shorter than this many characters are flagged."
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_off(cls, data: Any) -> Any:
        """YAML reads an unquoted `off` as false: `leakage: off` means the severity off."""
        if isinstance(data, dict):
            return {k: "off" if v is False else v for k, v in data.items()}
        return data

    def severities(self) -> dict[str, CheckSeverity]:
        """Each check's severity (every field but the thresholds)."""
        return self.model_dump(exclude={"imbalance_ratio", "short_chars"})


class BaselineConfig(_Strict):
    """How the untouched base model is scored zero-shot before training."""

    enabled: bool = Field(True, description="Score the base model before training.")
    reuse: bool = Field(
        True,
        description="Reuse the base model's scores of an earlier run that scored the same base "
        "model on the same evaluation rows with the same settings and tuneforge code (kept in "
        "<TUNEFORGE_HOME>/cache/base-scores); false scores it again (and keeps the new scores).",
    )
    instruction: str | None = Field(
        None,
        description="Zero-shot instruction; `{labels}` is replaced by the label words. "
        "Default: a generic 'classify as one of' prompt.",
    )
    label_words: dict[str, str] | None = Field(
        None, description="Word the base model should answer for each label (default: the label)."
    )


class EvaluationConfig(_Strict):
    """How sure a comparison is: every base-vs-tuned (and start-vs-tuned) figure carries an
    interval from a paired bootstrap over the same evaluation examples (evaluation/intervals.py)."""

    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals (0.95: 95%)."
    )
    resamples: int = Field(
        1000, ge=100, le=100_000, description="Bootstrap resamples per interval (seeded)."
    )
    seed: int = Field(0, description="Seed of the bootstrap resampling.")
    detectable_difference: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="The accuracy difference the validation set should be able to show as "
        "significant (80% power); `data check` and `plan` warn when it is too small to, and say "
        "how many examples would be.",
    )


class ClassificationConfig(_Strict):
    """Classification runs: what happens to the tuned model's probabilities after training."""

    calibration: Literal["none", "temperature"] = Field(
        "none",
        description="`temperature`: after training, fit one temperature T on the validation "
        "split (the tuned model's log-probabilities divided by T minimise the log-loss), store it "
        "with the run (calibration.json, run.json) and apply it in predict, `eval` and the server: "
        "probabilities that say how often the model is right, the same predicted labels. The "
        "expected calibration error (ECE) before and after is in metrics.json and the report. "
        "`none`: the model's own probabilities.",
    )


class MemorizationConfig(_Strict):
    """Canaries for the memorisation audit (`tuneforge eval RUN --memorization`): random secrets
    in a fixed format ("The access code for account 4821 is 7391-0284-5517.") planted into the
    training data only (sft: a user question with the assistant's answer; pretrain: a document),
    never into validation or test; recorded in the run's canaries.json (data/canaries.py)."""

    canaries: int = Field(
        0,
        ge=0,
        le=1000,
        description="How many random secrets to plant (0: none). sft and pretrain runs only.",
    )
    repeats: int = Field(
        5,
        ge=1,
        le=10_000,
        description="How many times each canary appears in the training data (more repeats, "
        "more memorisation: the audit measures how much).",
    )
    seed: int = Field(
        0, description="Seed of the secrets and of where they go among the training rows."
    )


class SftConfig(_Strict):
    """Supervised instruction/chat tuning: how examples become chats and what the loss sees."""

    format: Literal["auto", "messages", "prompt_completion", "alpaca"] = Field(
        "auto",
        description="Shape of the data; `auto` picks it from the columns of the training file "
        "(messages_field, then prompt_field+completion_field, then instruction_field+output_field).",
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant",
        description="`assistant`: loss only on the assistant turns (and their end-of-turn token); "
        "`all`: loss on every token of the rendered chat.",
    )
    overlong: Literal["truncate", "drop"] = Field(
        "truncate",
        description="Examples longer than training.max_length are cut to it (`truncate`; an "
        "example left without any assistant token is dropped) or left out (`drop`).",
    )
    system_prompt: str | None = Field(
        None,
        description="System message put before every training example and used the same way by "
        "`generate`, `chat`, `predict` and the server (chats that carry their own system message "
        "keep theirs), so the model is prompted at inference exactly as in training.",
    )
    generation_examples: int = Field(
        16,
        ge=0,
        description="Validation examples answered greedily at every evaluation for exact match, "
        "ROUGE-L, chrF and BLEU (0: loss and perplexity only).",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="Longest answer generated for the generation metrics."
    )
    share_prefix: bool = Field(
        True,
        description="Compute the leading tokens that every row of a batch shares (chat template, "
        "system prompt) once per batch instead of once per row: the same loss and gradients for "
        "less compute. With LoRA dropout, the rows then share the dropout masks on that prefix; "
        "`false` draws them per row. Off with gradient checkpointing.",
    )


class PreferenceConfig(_Strict):
    """Learning from preferences and feedback with TRL's trainers (DPO, KTO, ORPO).

    Pairwise data (prompt, chosen, rejected) trains DPO or ORPO; unpaired feedback (prompt,
    completion, label: thumbs up/down) trains KTO. The reference model is the starting point (the
    base model, or the run being continued); with LoRA it is the same weights with the adapter
    switched off, so no second copy is held in memory.
    """

    algorithm: Literal["dpo", "kto", "orpo"] = Field(
        "dpo",
        description="dpo: Direct Preference Optimization (pairs, a reference model); kto: "
        "Kahneman-Tversky Optimization (unpaired thumbs up/down, a reference model); orpo: "
        "Odds-Ratio Preference Optimization (pairs, no reference model, an SFT loss on chosen).",
    )
    format: Literal["auto", "pairwise", "unpaired"] = Field(
        "auto",
        description="Shape of the data; `auto` picks it from the training file's columns: "
        "chosen_field + rejected_field (pairwise), else completion_field + label_field (unpaired).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo/kto: strength of the pull towards the reference model (higher: the "
        "model stays closer to it). orpo: the weight of the odds-ratio term beside the SFT loss.",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid",
        description="dpo only: sigmoid (the DPO paper), ipo (a squared loss that does not let the "
        "margin grow without bound), hinge (SLiC), robust (DPO with label noise; set "
        "label_smoothing).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="dpo (sigmoid, robust): assumed share of pairs whose preference is wrong.",
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="kto: loss weight of thumbs-up examples (raise it when fewer)."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: loss weight of thumbs-down examples (raise it when fewer)."
    )
    overlong: Literal["truncate", "drop"] = Field(
        "truncate",
        description="Examples whose prompt and answer exceed training.max_length: the answer is "
        "cut to fit (`truncate`; a prompt that leaves no room drops the example) or the example "
        "is left out (`drop`). Counted in run.json and the data check.",
    )
    system_prompt: str | None = Field(
        None,
        description="System message put before every prompt in training, evaluation, generation "
        "and serving (prompts that carry their own system message keep theirs).",
    )
    generation_examples: int = Field(
        4,
        ge=0,
        description="Validation prompts answered greedily by the starting and the tuned model, "
        "side by side in metrics.json and the report; with kl_examples, the sampled answers "
        "that estimate the KL divergence from the reference.",
    )
    kl_examples: int = Field(
        16,
        ge=0,
        description="Validation prompts on which the tuned model samples one answer each to "
        "estimate KL(tuned || reference) at the end (0: not measured).",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="Longest answer generated for samples and the KL estimate."
    )


class Recipe(_Strict):
    """A fine-tuning job: base model, task, data, method and training settings."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=80,
        description="Run name; the run directory is <output_dir>/<name>-<timestamp>.",
    )
    base_model: str = Field(
        "smollm2-135m",
        description="Embedded name, a local Hugging Face folder, a .gguf file or a hub id; or an "
        "earlier fine-tuned version to continue training on new data: `run:<run id or folder>` or "
        "`model:<name>@<stage or version>` (e.g. model:sentiment@production, model:sentiment@3).",
    )
    task: TaskName = Field(description="classification | sft | pretrain | preference")
    data: DataConfig
    method: MethodName = Field(
        "lora", description="lora | full | freeze (qlora: lora with lora.quantize_base: 4bit)"
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    data_checks: DataChecksConfig = Field(default_factory=DataChecksConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    memorization: MemorizationConfig = Field(default_factory=MemorizationConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    replay: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Continued runs only: mix this many of the parent run's training examples, as "
        "a fraction of the new training set's size (seeded sample), into the training data, so "
        "the model keeps seeing what it learned before and forgets less. 0: new data only.",
    )
    device: str = Field(
        "auto",
        description="Where the model trains and runs: auto (the CUDA GPU when torch sees one, else "
        "the CPU), cpu, cuda or cuda:N. Commands that load a run take --device to override it.",
    )
    output_dir: Path = Field(Path("runs"), description="Where run directories are created.")
    registry: Path | None = Field(
        None,
        description="Run registry (SQLite); default $TUNEFORGE_REGISTRY or ~/.cache/tuneforge.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder.")
    allow_pickle: bool = Field(
        False,
        description="Load pickle weights (pytorch_model.bin, *.pt, *.pth, *.ckpt) when a model "
        "folder or checkpoint has no safetensors: unpickling can run code, so only for files you "
        "trust (same as `train --allow-pickle`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _qlora_shorthand(cls, data: Any) -> Any:
        """`method: qlora` is LoRA on a 4-bit base: stored as method lora + lora.quantize_base."""
        if isinstance(data, dict) and data.get("method") == "qlora":
            lora = data.get("lora") if isinstance(data.get("lora"), dict) else {}
            data = {**data, "method": "lora", "lora": {**lora, "quantize_base": "4bit"}}
        return data

    @field_validator("base_model")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("replay")
    @classmethod
    def _replay_needs_parent(cls, v: float, info) -> float:
        base = info.data.get("base_model", "")
        if v > 0 and not str(base).startswith(("run:", "model:")):
            raise ValueError(
                f"replay mixes in the training data of the run being continued, but base_model "
                f"{base!r} is not an earlier run; set base_model to run:<run id> or "
                "model:<name>@<stage>, or remove replay"
            )
        return v

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (`a.b=value`) and validate a recipe file."""
    path = Path(path)
    if path.is_dir():
        raise TuneforgeError(
            f"{path} is a folder, not a recipe file", hint="pass the recipe's YAML file"
        )
    if not path.is_file():
        raise TuneforgeError(f"recipe file not found: {path}", hint="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TuneforgeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise TuneforgeError(f"{path}:{where}: invalid YAML: {problem}") from None
    if raw is None:
        raise TuneforgeError(f"{path}: the recipe is empty")
    if not isinstance(raw, dict):
        raise TuneforgeError(f"{path}: a recipe must be a mapping of keys (name, task, data, ...)")
    lines: dict[tuple, int | str] = dict(_line_index(node))
    for item in overrides or []:
        _mark_override(lines, apply_override(raw, item), item)
    return validate_recipe(raw, source=str(path), lines=lines)


def _mark_override(lines: dict[tuple, int | str], key: tuple[str, ...], item: str) -> None:
    """Errors in a value given by `--set` point at the option, not at the file's old line."""
    for path in [p for p in lines if p[: len(key)] == key]:
        del lines[path]
    lines[key] = f"--set {item}"
    for i in range(1, len(key)):
        lines.setdefault(key[:i], f"--set {item}")  # sections the option created


def validate_recipe(
    raw: dict[str, Any], source: str = "recipe", lines: dict[tuple, int | str] | None = None
) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise TuneforgeError(_format_errors(e, source, lines or {})) from None


def apply_override(raw: dict[str, Any], item: str) -> tuple[str, ...]:
    """Apply one `--set a.b=value`; the value is parsed as YAML (numbers, booleans, lists).

    Returns the key path that was set.
    """
    if "=" not in item:
        raise TuneforgeError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=1")
    key, value = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TuneforgeError(f"--set {item!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    cursor = raw
    for i, part in enumerate(parts[:-1]):
        nxt = cursor.get(part)
        if nxt is None:
            nxt = cursor[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise TuneforgeError(f"--set {item!r}: '{where}' is not a section")
        cursor = nxt
    cursor[parts[-1]] = parsed
    return tuple(parts)


def _line_index(
    node: yaml.Node | None, prefix: tuple = (), seen: set[int] | None = None
) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line number.

    A node reached again through an alias is indexed once: an alias cycle (`a: &x [*x]`) would
    recurse forever and nested aliases (a "billion laughs" file) would take exponential time.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return {}
    seen.add(id(node))
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            out[path] = key_node.start_mark.line + 1
            out.update(_line_index(value_node, path, seen))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            out.update(_line_index(item, (*prefix, i), seen))
    return out


def _model_for_path(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc` (for did-you-mean on unknown keys)."""
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model


def _format_errors(e: ValidationError, source: str, lines: dict[tuple, int | str]) -> str:
    messages = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = lines.get(loc)
        # a value set by --set (or inside a section it replaced) is reported against the option
        option = next(
            (v for i in range(len(loc), 0, -1) if isinstance(v := lines.get(loc[:i]), str)), None
        )
        where = option or (f"{source} line {line}" if line else source)
        if err["type"] == "extra_forbidden":
            owner = _model_for_path(loc)
            hint = did_you_mean(str(loc[-1]), owner.model_fields) if owner else ""
            messages.append(f"{where}: unknown key '{field}'{hint}")
        elif err["type"] == "missing":
            messages.append(f"{where}: missing required field '{field}'")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {reprlib.repr(got)})"  # bounded
            messages.append(f"{where}: {field}: {err['msg']}{got_s}")
    return "invalid recipe:\n  " + "\n  ".join(messages)
