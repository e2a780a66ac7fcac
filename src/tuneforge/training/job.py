"""The training job: a recipe in, a finished run directory out.

Nothing imports this module but `entry.py`, in the process that trains (each of them when there
are several); it wires the library together: the recipe read once, the data read, checked and tokenised once (`_set_up`),
the base model scored, the Trainer built and run (`trainer.py`), the tuned model scored, the run
written (`runs/`). The same code runs in one process and on every rank of a distributed run:
rank guards, rank 0 alone writes.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape
from transformers import set_seed

from tuneforge import cpu_bf16, devices, kernels, precision, safety
from tuneforge.config import Recipe
from tuneforge.data import canaries
from tuneforge.data.recipe_check import check_data
from tuneforge.errors import TuneforgeError, did_you_mean
from tuneforge.evaluation import calibration, outcomes
from tuneforge.evaluation.intervals import Settings, compare_splits
from tuneforge.files import write_json, write_text
from tuneforge.library_output import tame
from tuneforge.methods import apply_method, count_parameters, enable_gradient_checkpointing
from tuneforge.methods.qlora import load_quantized_base
from tuneforge.models import load_tokenizer
from tuneforge.progress import console, say, status
from tuneforge.report import write_report
from tuneforge.runs import base_scores, registry
from tuneforge.runs.directory import RunDir
from tuneforge.runs.parents import base_source, is_reference, resolve
from tuneforge.runs.parents import pin as pin_parent
from tuneforge.runs.provenance import provenance
from tuneforge.tasks import get_task
from tuneforge.training import checkpointing, distributed, launch, tracking
from tuneforge.training.continuation import check_task, continue_from, start_model
from tuneforge.training.request import Job
from tuneforge.training.trainer import TrainingDiverged, build_trainer


def run_job(job: Job) -> Path | None:
    """The run, in this process: alone, or as one rank of several (torchrun, accelerate launch,
    training.processes). Every rank reads the data, builds the model and trains; rank 0 alone
    writes the run directory, scores the base model, evaluates, saves and reports. Returns the
    finished run's folder on rank 0, None on the others."""
    with safety.pickle_scope():  # a recipe's allow_pickle holds for this run only
        distributed.init()  # no-op in a single process; silences the ranks other than 0
        tame()  # after init: a silenced rank shows no library bars either
        t0 = time.perf_counter()
        main = distributed.is_main()
        reopened = RunDir.reopen(job.resume) if job.resume is not None and main else None
        setup = _set_up(job)
        load_seconds = time.perf_counter() - t0
        run = _open_run(setup, reopened) if main else None
        run_path = Path(distributed.share(str(run.path) if main else None))
        if not main:
            _fit(setup, run_path, job.resume is not None)
            return None
        with _outcome(run, setup.recipe, resumed=job.resume is not None):
            final = _main_rank(setup, run, job, t0, load_seconds)
        say(f"[green]Finished[/green]: {escape(str(final))}")
        return final


def _open_run(setup: _Setup, reopened: RunDir | None) -> RunDir:
    """Rank 0's run directory (a new one, or the resumed one), announced in the registry."""
    recipe = setup.recipe
    try:
        run = reopened or RunDir.create(recipe.output_dir, recipe.name)
    except TuneforgeError as e:
        distributed.share(e)  # the other ranks stop too instead of waiting for a run directory
        raise
    run.set_status("running", recipe_dir=str(setup.recipe_dir.resolve()))
    say(
        f"Run directory: {escape(str(run.final))} (written as {escape(run.path.name)} until finished)"
    )
    parent = setup.parent
    _record(
        recipe,
        run,
        status="running",
        created=run.started,  # a resumed run keeps its first start (RunDir.reopen)
        **{
            **setup.inputs,
            **({"base_model": parent.spec, "parent": parent.run_id} if parent is not None else {}),
        },
    )
    return run


@contextmanager
def _outcome(run: RunDir, recipe: Recipe, *, resumed: bool) -> Iterator[None]:
    """How the run ends when it does not finish: its status and registry entry say why, and
    what can be resumed is kept (a user error before anything was produced removes it)."""
    previous_handler = _sigterm_as_interrupt()
    try:
        yield
    except (TrainingDiverged, checkpointing.NotEnoughDiskSpace) as e:
        run.set_status("failed", error=e.message)
        _record(recipe, run, status="failed", error=e.message)
        raise
    except TuneforgeError:
        if resumed:  # keep what the interrupted run already had
            run.set_status("interrupted")
            raise
        run.discard()
        _record(recipe, run, status="failed", error="user error before training finished")
        raise
    except KeyboardInterrupt:
        run.set_status("interrupted")
        _record(recipe, run, status="interrupted")
        console.print(f"[yellow]Interrupted[/yellow]: partial run left in {run.path}")
        raise
    except BaseException as e:
        run.set_status("failed", error=f"{type(e).__name__}: {e}")
        _record(recipe, run, status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        _restore_sigterm(previous_handler)


def _main_rank(setup: _Setup, run: RunDir, job: Job, t0: float, load_seconds: float) -> Path:
    """Rank 0's run: base model, training, final scoring, files, report; the finished folder."""
    recipe, task, prepared = setup.recipe, setup.task, setup.prepared
    timings: dict[str, float] = {"load_and_prepare": load_seconds}
    if job.resume is None:
        write_text(run.path / "recipe.yaml", _yaml(recipe))
    write_json(run.path / "data_check.json", setup.data_report.to_dict())
    if setup.planted is not None:  # memorization.canaries: the secrets, for the audit
        write_json(run.path / canaries.FILE, setup.planted.record())
    eval_splits = {"validation": prepared.splits.validation}
    if prepared.splits.test is not None:
        eval_splits["test"] = prepared.splits.test
    base, seconds = _score_base(setup, run, eval_splits)
    if seconds is not None:
        timings["base_eval"] = seconds

    trainer = _fit(setup, run.path, job.resume is not None)
    timings["train"] = trainer.seconds
    model, tokenizer = trainer.model, setup.tokenizer
    _save_model(model, recipe.method, run.path)
    tokenizer.save_pretrained(run.path / "tokenizer")
    model = _for_final_scoring(setup, run.path, model)

    t = time.perf_counter()
    with launch.all_cores():  # the other processes have returned
        tuned = {
            split: task.evaluate(model, tokenizer, rows, prepared.info, recipe, split)
            for split, rows in eval_splits.items()
        }
        forgetting = None
        if setup.continued is not None:
            after = setup.continued.measure(task, model, tokenizer, "after")
            forgetting = setup.continued.forgetting(setup.metric, trainer.forgetting_before, after)
    # classification.calibration: temperature: T fitted on validation, put in info (run.json)
    calibrated = calibration.calibrate_run(
        run.path, tuned, prepared.info, recipe.classification.calibration
    )
    scored = {"base": base, "tuned": tuned}
    if trainer.start_metrics is not None:  # continued: the parent's weights on these splits
        scored["start"] = trainer.start_metrics
    figures, per_example = {}, {}
    for who, results in scored.items():
        figures[who], per_example[who] = outcomes.split_all(results)
    settings = Settings.of(recipe.evaluation)
    comparisons = {
        # how sure each gain is: paired bootstrap intervals over the same examples
        f"{who}_comparison" if who != "base" else "comparison": compare_splits(
            per_example[who], per_example["tuned"], settings
        )
        for who in scored
        if who != "tuned" and per_example[who]
    }
    timings["final_eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    metrics = {
        "task": task.name,
        "selection_metric": setup.metric,
        "best": _best(trainer, setup.metric),
        "evaluations": trainer.record.evaluations,
        "log_history": trainer.state.log_history,
        **figures,
        **comparisons,
        "overfitting": trainer.record.overfitting,
        **({"forgetting": forgetting} if forgetting is not None else {}),
        **({"calibration": calibrated} if calibrated is not None else {}),
    }
    write_json(run.path / "metrics.json", metrics)
    outcomes.save(run.path, {who: found for who, found in per_example.items() if found})
    write_json(run.path / "run.json", _run_record(setup, trainer, timings))
    write_report(run.path, run.final.name)
    _remove_checkpoints(run.path)
    final = run.finish()
    _record(
        recipe,
        run,
        status="finished",
        finished=time.time(),
        path=str(final),
        metrics=_summary(metrics),
    )
    return final


def _for_final_scoring(setup: _Setup, run_path: Path, model):
    """The model the final scores are measured on: the trained one, except where this run
    trained in bf16 on a CPU but its task is used in fp32 (generation, see `Task.infers_in_bf16`):
    then the saved weights loaded back as `predict` and the exports hold them, so the run's
    figures are those a user gets."""
    recipe, task = setup.recipe, setup.task
    if (
        task.infers_in_bf16
        or not _on_cpu(recipe)
        or devices.recipe_training_precision(recipe) != "bf16"
    ):
        return model
    with status("Loading the saved weights in fp32 for the final scores"):
        saved = task.load_tuned(
            run_path, setup.source, setup.prepared.info, recipe.method, setup.tokenizer, recipe
        )
    saved.eval()
    return devices.place(saved, devices.resolve(recipe.device))


def _score_base(
    setup: _Setup, run: RunDir, eval_splits: dict[str, list]
) -> tuple[dict[str, Any], float | None]:
    """The untouched base model's metrics on the evaluation splits, and the seconds scoring (or
    reading an earlier run's identical scoring, `baseline.reuse`) took; None when nothing was
    scored now: resumed runs keep theirs, or the baseline is off."""
    recipe, info = setup.recipe, setup.prepared.info
    saved, origin = run.path / "base_metrics.json", run.path / "base_origin.json"
    if saved.is_file():  # resumed: the base model was scored already (or its scores reused)
        if origin.is_file():
            setup.base_reused = json.loads(origin.read_text())
        return json.loads(saved.read_text()), None
    if not recipe.baseline.enabled:
        return {}, None
    t = time.perf_counter()
    with launch.all_cores():
        key = base_scores.key(
            recipe,
            setup.source.path,
            eval_splits,
            info,
            device=str(devices.resolve(recipe.device)),
            precision=devices.recipe_inference_precision(recipe),
            weights_sha256=setup.inputs.get("base_weights_sha256"),  # hashed once per run
        )
        base, kept = base_scores.reused_or_scored(
            key,
            eval_splits,
            lambda: setup.task.evaluate_base(
                setup.source, setup.tokenizer, eval_splits, info, recipe
            ),
            reuse=recipe.baseline.reuse,
            run=run.final.name,
        )
    seconds = time.perf_counter() - t
    if kept is not None:  # the console, run.json and the report say where the figures came from
        say(escape(base_scores.reuse_message(kept, "baseline.reuse: false")))
        setup.base_reused = {field: kept[field] for field in ("run", "created", "key")}
        write_json(origin, setup.base_reused)
    write_json(saved, base)  # last: a resumed run reads the origin beside it
    return base, seconds


def _fit(setup: _Setup, run_path: Path, resumed: bool):
    """Build the model and the Trainer and train (every rank); returns the Trainer, holding the
    best checkpoint's model. Rank 0 also measures the parent before training (continued runs)
    and checks the disk space first."""

    recipe, task, tokenizer, prepared = setup.recipe, setup.task, setup.tokenizer, setup.prepared
    main = distributed.is_main()
    set_seed(recipe.training.seed)
    with status("Loading model"):
        model = build_model(task, setup.source, prepared, recipe, tokenizer, setup.parent)
    trainable, total = count_parameters(model)
    console.print(
        f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
    )
    forgetting_before = None
    if setup.continued is not None and main:  # the parent itself, on the parent's validation set
        with launch.all_cores():
            forgetting_before = setup.continued.measure(task, model, tokenizer, "before")
    start = _score_start(setup, model, run_path) if setup.continued is not None and main else None
    t = time.perf_counter()
    trainer = build_trainer(recipe, task, prepared, model, tokenizer, run_path, setup.metric)
    trainer.parameters = {"trainable": trainable, "total": total}
    trainer.forgetting_before = forgetting_before
    trainer.start_metrics = start
    checkpoint = checkpointing.resume_checkpoint(run_path, tidy=main) if resumed else None
    if main:
        checkpointing.ensure_space(
            run_path,
            checkpointing.checkpoint_bytes(model) + checkpointing.weights_bytes(model),
            "training (one checkpoint and the final model)",
            resume_hint=run_path,
        )
    trainer.train(resume_from_checkpoint=checkpoint)
    distributed.barrier()  # the other ranks have loaded the best checkpoint before it goes
    trainer.seconds = time.perf_counter() - t
    diverged = trainer.guard.diverged
    if diverged and main:
        raise TrainingDiverged(
            f"training stopped: the loss became {diverged['loss']} at step {diverged['step']}",
            hint=f"the last good checkpoint is kept in {run_path / 'checkpoints'}; lower "
            "training.learning_rate, add warm-up (training.warmup_ratio) or check the data for "
            "broken examples",
        )
    return trainer


def _score_start(setup: _Setup, model, run_path: Path) -> dict[str, Any]:
    """A continued run's starting point (the parent's weights) on this run's evaluation splits,
    before training: the gain over the version it continues (kept across a resume)."""
    saved = run_path / "start_metrics.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    splits = {"validation": setup.prepared.splits.validation}
    if setup.prepared.splits.test is not None:
        splits["test"] = setup.prepared.splits.test
    with launch.all_cores():
        start = {
            split: setup.task.evaluate(
                model, setup.tokenizer, rows, setup.prepared.info, setup.recipe, split
            )
            for split, rows in splits.items()
        }
    write_json(saved, start)
    return start


def _run_record(setup: _Setup, trainer, timings: dict[str, float]) -> dict[str, Any]:
    """run.json: what was trained on what, with which parameters, how long each phase took."""
    recipe, parent, continued = setup.recipe, setup.parent, setup.continued
    return {
        "name": recipe.name,
        "task": setup.task.name,
        "method": recipe.method,
        "base_model": parent.spec if parent is not None else recipe.base_model,
        "base_model_path": str(setup.source.path),
        "data_sources": setup.prepared.splits.sources,
        "data": setup.inputs["data"],
        **({"parent": continued.record()} if continued is not None else {}),
        "info": setup.prepared.info,
        "parameters": trainer.parameters,
        "precision": devices.recipe_training_precision(recipe),
        **({"cpu": cpu_bf16.detect().describe()} if _on_cpu(recipe) else {}),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        **({"base_scores_reused": setup.base_reused} if setup.base_reused else {}),
        "environment": setup.inputs["versions"],
    }


@dataclass
class _Setup:
    """What every rank needs before training: the recipe resolved, the data read and checked."""

    recipe: Recipe
    recipe_dir: Path
    task: Any
    metric: str
    parent: Any  # runs.parents.Parent for continued training, else None
    source: Any
    tokenizer: Any
    prepared: Any
    data_report: Any
    continued: Any
    inputs: dict[str, Any]  # provenance: base weights and data hashes, versions (rank 0)
    planted: Any = None  # data.canaries.Planted: memorization.canaries in the training rows
    base_reused: dict[str, Any] | None = None  # the earlier run whose base scores this one reused


def _set_up(job: Job) -> _Setup:
    """Resolve the base model or parent, tokenizer and data; check the data.

    Every rank runs it, so they read the same data the same way.
    """

    recipe, recipe_dir = job.recipe, job.recipe_dir
    safety.allow_pickle(recipe.allow_pickle)
    tracking.check_available(recipe.training.report_to)
    devices.require_hardware_for(recipe)  # mixed precision, QLoRA: refused before any data is read
    task = get_task(recipe.task)
    metric = selection_metric(recipe, task)
    set_seed(recipe.training.seed)
    parent = _parent(recipe)  # continued training: base_model names an earlier run
    if parent is not None:
        recipe = pin_parent(recipe, parent)
    source = (
        parent.source
        if parent is not None
        else base_source(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
    )
    task.check_base_model(source, recipe)  # a family without the task's head: before the data
    with status(f"Loading tokenizer of {recipe.base_model}"):
        tokenizer = load_tokenizer(source.path, trust_remote_code=recipe.trust_remote_code)
    # The task's own strict reading first: a missing column or an empty text gets its precise
    # message (file, line, field). The rows are read and tokenised once; the data check's findings
    # (leakage, duplicates, ...) are about those rows and their token counts.
    splits = task.read(recipe, recipe_dir)
    planted = canaries.plant(task, recipe, splits)  # memorization.canaries: train rows only
    if planted is not None:
        splits = planted.splits
    continued = continue_from(parent, task, recipe, splits) if parent is not None else None
    with status("Tokenizing the data"):
        if continued is not None:
            prepared = continued.tokenize(task, splits, tokenizer)
        else:
            prepared = task.tokenize(splits, recipe, tokenizer)
    if planted is not None:  # the data check and token counts: the user's own rows
        planted.hide(prepared)
    data_report = check_data(recipe, tokenizer, task, recipe_dir, prepared)
    inputs = (
        provenance(recipe, source, prepared.splits.sources) if distributed.is_main() else {}
    )  # every data file hashed once
    return _Setup(
        recipe,
        recipe_dir,
        task,
        metric,
        parent,
        source,
        tokenizer,
        prepared,
        data_report,
        continued,
        inputs,
        planted,
    )


def build_model(task, source, prepared, recipe: Recipe, tokenizer, parent=None):
    """The task's model with the method applied (or the parent run's weights), ready to train."""

    if recipe.lora.quantize_base and parent is None:
        labels = prepared.info.get("labels")
        model = load_quantized_base(
            source.path, recipe, task.peft_task_type, labels, tokenizer.pad_token_id
        )
    else:
        model = task.build_model(source, prepared, recipe, tokenizer)
    device = devices.resolve(recipe.device)  # where the Trainer will put it
    if parent is not None:  # the parent's weights: its adapter keeps training, or its model
        model = start_model(parent, model, recipe, task.peft_task_type, device)
    else:
        model = apply_method(
            model, recipe.method, recipe.lora, recipe.freeze, task.peft_task_type, device
        )
    if recipe.training.gradient_checkpointing:
        enable_gradient_checkpointing(model, recipe.method)
    precision.for_training(model, recipe, device)  # bf16: the frozen base stored in bf16
    kernels.for_training(model, recipe, device)  # Liger on CUDA where installed
    return model


def _on_cpu(recipe: Recipe) -> bool:
    return devices.resolve(recipe.device).type == "cpu"


def _parent(recipe: Recipe):
    """The earlier run a `run:`/`model:` base_model names (None for a plain base model)."""
    if not is_reference(recipe.base_model):
        return None
    parent = resolve(recipe.base_model, recipe.registry)
    check_task(parent, recipe.task)
    return parent


def _record(recipe: Recipe, run: RunDir, /, **fields: Any) -> None:
    """Write to the registry; a registry problem warns but never loses the run."""
    try:
        registry.record_run(
            run.final.name,
            registry=recipe.registry,
            path=fields.pop("path", str(run.final)),
            **fields,
        )
    except Exception as e:  # sqlite locked, read-only home, ...
        console.print(f"[yellow]warning:[/yellow] could not record the run in the registry: {e}")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline figures for `runs list`: scalar metrics of base and tuned per split."""

    def scalars(d: dict[str, Any]) -> dict[str, float]:
        return {
            k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    return {
        "selection_metric": metrics["selection_metric"],
        "best": metrics["best"],
        "tuned": {s: scalars(m) for s, m in metrics["tuned"].items()},
        "base": {s: scalars(m) for s, m in metrics.get("base", {}).items()},
    }


def _sigterm_as_interrupt():
    """A polite kill (SIGTERM) marks the run interrupted, like Ctrl-C; SIGKILL leaves 'running'."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # In a launched process the launcher forwards a second copy of the signal: only the first counts.
    return signal.signal(
        signal.SIGTERM, launch.interrupt_once if launch.launched() > 1 else handler
    )


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def selection_metric(recipe: Recipe, task) -> str:
    metric = recipe.early_stopping.metric or task.default_metric
    if metric not in task.metric_names:
        raise TuneforgeError(
            f"early_stopping.metric: '{metric}' is not a {task.name} metric{did_you_mean(metric, task.metric_names)}",
            hint=f"choose one of: {', '.join(task.metric_names)}",
        )
    return metric


def _best(trainer, metric: str) -> dict[str, Any]:
    state = trainer.state
    step = None
    if state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    return {
        "metric": metric,
        "value": state.best_metric,
        "step": step,
        "global_steps": state.global_step,
    }


def _save_model(model, method: str, run_path: Path) -> None:
    if method == "lora":  # the trained adapter only (not a frozen reference adapter)
        model.save_pretrained(run_path / "adapter", selected_adapters=["default"])
    else:
        model.save_pretrained(run_path / "model", safe_serialization=True)


def _remove_checkpoints(run_path: Path) -> None:

    shutil.rmtree(run_path / "checkpoints", ignore_errors=True)


def _yaml(recipe: Recipe) -> str:

    return yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False)
