"""A finished run, loaded back: predict with it, evaluate it, inspect its metrics."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from tuneforge import devices, safety
from tuneforge.config import Recipe, validate_recipe
from tuneforge.data import canaries
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import calibration, memorization, outcomes
from tuneforge.evaluation.intervals import Settings, compare, estimate
from tuneforge.files import write_json
from tuneforge.generation import Sampling
from tuneforge.models import ModelSource, load_tokenizer
from tuneforge.precision import ready_for_inference
from tuneforge.report import write_report
from tuneforge.runs import base_scores
from tuneforge.runs.directory import INCOMPLETE
from tuneforge.runs.parents import base_source
from tuneforge.tasks import get_task
from tuneforge.tasks.base import base_language_model


class Run:
    def __init__(
        self, path: Path, recipe: Recipe, meta: dict[str, Any], precision: str | None = None
    ) -> None:
        self.path = path
        self.recipe = recipe
        self.meta = meta
        self.task = get_task(meta["task"])
        self._precision = precision  # None: as the run trained, where faster (devices)

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | None = None, precision: str | None = None
    ) -> Run:
        """A finished run; `device` (auto, cpu, cuda, cuda:N) overrides the recipe's `device`;
        `precision` "fp32" keeps the model in fp32 for inference (exports and their checks),
        None runs it as it trained where that is faster (bf16 on a CPU with native bf16)."""
        path = Path(path)
        if not path.is_dir():
            raise TuneforgeError(f"run directory not found: {path}")
        if path.name.endswith(INCOMPLETE) or not (path / "run.json").is_file():
            state = ""
            status = path / "status.json"
            if status.is_file():
                state = f" (status: {json.loads(status.read_text()).get('status')})"
            raise TuneforgeError(
                f"{path} is not a finished run{state}",
                hint="pass a folder created by `tuneforge train`, e.g. runs/<name>-<timestamp>",
            )
        for required in ("recipe.yaml", "metrics.json"):
            if not (path / required).is_file():
                raise TuneforgeError(f"{path} is not a complete run: {required} is missing")
        recipe = validate_recipe(
            yaml.safe_load((path / "recipe.yaml").read_text()), source=str(path / "recipe.yaml")
        )
        meta = json.loads((path / "run.json").read_text())
        safety.check_run(path)  # pickle-only weights are refused unless allowed (--allow-pickle)
        if device is not None:
            devices.resolve(device)  # an unknown or absent device: refused before any loading
            recipe = recipe.model_copy(update={"device": device})
        return cls(path, recipe, meta, precision)

    def exact(self) -> Run:
        """This run with its model in fp32 (its saved weights as they are): what an export
        merges and what its checks compare with. Itself where it already is."""
        if self.precision == "fp32":
            return self
        return Run(self.path, self.recipe, self.meta, "fp32")

    @property
    def precision(self) -> str:
        """The precision the model runs in for inference: fp32, or bf16 on a CPU where the run
        trained in bf16 and the CPU computes it natively and faster."""
        if self._precision is not None:
            return self._precision
        if not self.task.infers_in_bf16:
            return "fp32"
        trained = self.meta.get("precision", "fp32")  # runs before precision was recorded: fp32
        return devices.inference_precision(trained, self.device)

    @property
    def labels(self) -> list[str] | None:
        return self.meta["info"].get("labels")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    @cached_property
    def source(self) -> ModelSource:
        return base_source(self.recipe.base_model, trust_remote_code=self.recipe.trust_remote_code)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.path / "tokenizer")

    @property
    def device(self):
        """Where this run's model goes: the recipe's `device` (auto: the GPU when there is one),
        or what `Run.load(..., device=)` / a command's `--device` asked for."""
        return devices.resolve(self.recipe.device)

    @cached_property
    def model(self):
        model = self.task.load_tuned(
            self.path,
            self.source,
            self.meta["info"],
            self.meta["method"],
            self.tokenizer,
            self.recipe,
        )
        model.eval()
        return ready_for_inference(model, self.device, self.precision)

    def predict(self, texts: list) -> list[dict[str, Any]]:
        """One prediction per input (classification: label and probabilities; sft: completion)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.task.predict(
            self.model, self.tokenizer, list(texts), self.meta["info"], self.recipe
        )

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> str:
        """The model's answer to one prompt (sft: a user turn in the chat template; pretrain: a
        plain continuation). Greedy unless `temperature` > 0."""
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        out = self.task.generate(
            self.model, self.tokenizer, [prompt], self.meta["info"], self.recipe, sampling
        )
        return out[0].text

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> str:
        """The next assistant reply to a conversation ({role, content} messages, ending with the user)."""
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        return self.task.chat(
            self.model, self.tokenizer, messages, self.meta["info"], self.recipe, sampling
        ).text

    def bias_probe(
        self, extra_terms: str | Path | None = None, *, save: bool = True
    ) -> dict[str, Any]:
        """Counterfactual identity swaps (classification); saved to bias.json and the report."""
        result = self.task.bias_probe(
            self.model,
            self.source,
            self.tokenizer,
            self.meta["info"],
            self.recipe,
            Path(extra_terms) if extra_terms else None,
        )
        if save:
            write_json(self.path / "bias.json", result)
            write_report(self.path)
        return result

    def memorization(
        self,
        *,
        samples: int = 32,
        prefix_tokens: int | None = None,
        suffix_tokens: int = 32,
        seed: int = 0,
        candidates: int = 1000,
        base: bool = True,
        save: bool = True,
    ) -> dict[str, Any]:
        """The memorisation audit (sft, pretrain; evaluation/memorization.py): greedy
        reproduction and loss of `samples` training vs held-out examples, the planted canaries'
        exposure, the base model beside; saved to memorization.json and the report."""
        options = memorization.Options(
            samples=samples,
            prefix_tokens=prefix_tokens,
            suffix_tokens=suffix_tokens,
            seed=seed,
            candidates=candidates,
            batch_size=self.recipe.training.eval_batch_size or self.recipe.training.batch_size,
        )
        view = self.task.memorization_view(self.tokenizer, self.meta["info"], self.recipe)
        splits = memorization.read_run_splits(self.task, self.recipe, self.meta.get("data", {}))
        planted = self.path / canaries.FILE
        result = memorization.audit(
            view,
            splits,
            self.model,
            self.tokenizer,
            options,
            base_model=(
                (lambda: base_language_model(self.source, self.recipe, self.precision))
                if base
                else None
            ),
            canaries=canaries.load(json.loads(planted.read_text())) if planted.is_file() else [],
        )
        if save:
            write_json(self.path / memorization.FILE, result)
            write_report(self.path)
        return result

    def evaluate(
        self,
        data: str | Path,
        *,
        base: bool = False,
        generate: int | None = None,
        settings: Settings | None = None,
        rescore_base: bool = False,
    ) -> dict[str, Any]:
        """Metrics of the tuned model on a labelled file; with `base`, of the untouched base too,
        and the comparison: each difference with its paired bootstrap interval (`settings`:
        the recipe's `evaluation` section by default). Generation metrics (sft) come from greedy
        answers to every row, or to the first `generate`. Returns {"tuned", "base", "comparison",
        "intervals" (each tuned metric's own interval), "outcomes" (per example, by model)}, and
        "base_reused" where the base model's scores were an earlier identical scoring's
        (`runs/base_scores.py`: the runs of a sweep evaluated on one file score the base once;
        `rescore_base` or the recipe's `baseline.reuse: false` scores it again)."""
        rows = self.task.read_eval_rows(Path(data), self.meta["info"])
        if generate is not None and generate < 0:
            raise TuneforgeError(f"--generate must be 0 or more, not {generate}")
        recipe = self.task.generating(self.recipe, len(rows) if generate is None else generate)
        settings = settings or Settings.of(self.recipe.evaluation)
        info = self.meta["info"]
        scored = {
            "tuned": self.task.evaluate(self.model, self.tokenizer, rows, info, recipe, "data")
        }
        if info.get("temperature"):  # temperature scaling: ECE and loss after it, beside
            calibration.add_scaled(scored["tuned"], info["temperature"])
        reused = None
        if base:  # the base model in the precision the tuned one runs in here
            scored["base"], reused = self._score_base(Path(data), rows, recipe, rescore_base)
        result: dict[str, Any] = {"outcomes": {}, "confidence": settings.confidence}
        if reused is not None:
            result["base_reused"] = reused
        for who, metrics in scored.items():
            result[who], found = outcomes.split_off(metrics)
            if found is not None:
                result["outcomes"][who] = found
        tuned = result["outcomes"].get("tuned")
        result["intervals"] = {
            metric: found["interval"]
            for metric, found in (estimate(tuned, settings) if tuned else {}).items()
        }
        if base and tuned and "base" in result["outcomes"]:
            result["comparison"] = compare(result["outcomes"]["base"], tuned, settings)
        return result

    def _score_base(
        self, data: Path, rows: list[dict], recipe: Recipe, rescore: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The base model's metrics on `rows` in the precision the tuned model runs in here, read
        from an identical earlier scoring where there is one; and where they came from."""
        training = recipe.training.model_copy(update={"precision": self.precision})
        recipe = recipe.model_copy(update={"training": training})
        info = self.meta["info"]
        key = base_scores.key(
            recipe,
            self.source.path,
            {"data": rows},
            info,
            device=str(self.device),
            precision=self.precision,
        )
        scores, origin = base_scores.reused_or_scored(
            key,
            ["data"],
            lambda: self.task.evaluate_base(
                self.source, self.tokenizer, {"data": rows}, info, recipe
            ),
            reuse=recipe.baseline.reuse and not rescore,
            run=f"{self.path.name} (tuneforge eval --base on {data.name})",
        )
        return scores["data"], origin

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, task={self.meta['task']!r}, method={self.meta['method']!r})"
        )
