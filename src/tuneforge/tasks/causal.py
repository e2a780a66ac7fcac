"""What the generative tasks (sft, pretrain) share: the causal LM itself, loading, chatting.

Both tasks train the unchanged language-modelling head (PEFT TaskType.CAUSAL_LM), so a run loads
back with stock transformers + PEFT and generates with `model.generate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel

from tuneforge import devices, padding_free, precision
from tuneforge.config import Recipe
from tuneforge.data.chat import (
    FALLBACK_TEMPLATE,
    accepts_system_role,
    encode_prompt,
    end_of_turn,
    stop_token_ids,
    with_system_prompt,
)
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import PerplexityCallback, token_weighted_loss
from tuneforge.generation import Generation, Sampling, generate
from tuneforge.models import ModelSource, load_causal_lm
from tuneforge.progress import console
from tuneforge.tasks.base import Prepared, Task, base_language_model


def settle_chat_template(tokenizer) -> None:
    """A base model without a chat template gets a plain one (saved with the run's tokenizer)."""
    if not tokenizer.chat_template:
        console.print(
            "[yellow]note[/yellow]: the base model has no chat template; using a plain one"
        )
        tokenizer.chat_template = FALLBACK_TEMPLATE
    elif not accepts_system_role(tokenizer):
        console.print(
            "[yellow]note[/yellow]: the model's chat template has no system role; system "
            "messages (and sft.system_prompt) go at the start of the first user turn"
        )


def warn_counts(info: dict[str, Any], dropped_why: str, truncated_what: str) -> None:
    """Say how many examples did not fit in max_length (also stored in run.json and the report)."""
    for counts, what in (
        (info["dropped"], f"left out ({dropped_why})"),
        (info["truncated"], truncated_what),
    ):
        for split, n in counts.items():
            if n:
                console.print(
                    f"[yellow]warning[/yellow]: {n} of {info['examples'][split]} {split} "
                    f"examples {what}"
                )


def flat_batches(model, recipe: Recipe) -> bool:
    """Whether `model` trains on padding-free batches for `recipe` (padding_free.py): wanted
    there, and the model's attention reads sequence boundaries from position ids (on CUDA, flash
    attention's variable-length kernel where `flash_attn` is installed and the base is bf16)."""
    device = devices.resolve(recipe.device)
    if not padding_free.wanted(recipe, device):
        return False
    if (
        precision.gpu_bf16_base(recipe)
        and devices.precision(recipe.training.precision, device, recipe.method) == "bf16"
    ):  # flash attention takes bf16 only, in training and in the scoring after it
        padding_free.choose_attention(model, device)
    if not padding_free.supported(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise TuneforgeError(
            f"training.padding_free: {type(base).__name__} with attention "
            f"'{getattr(base.config, '_attn_implementation', None)}' does not keep packed "
            "sequences apart",
            hint="set training.padding_free: false",
        )
    return True


class CausalLMTask(Task):
    peft_task_type = "CAUSAL_LM"
    default_metric = "loss"

    def build_model(self, source: ModelSource, prepared: Prepared, recipe: Recipe, tokenizer=None):
        model = load_causal_lm(source.path, trust_remote_code=recipe.trust_remote_code)
        if tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    def trainer_metrics(self, prepared: Prepared, history: list[dict[str, Any]]):
        # The Trainer gathers (rows x 2) summed losses and token counts, never the (batch x
        # length x vocabulary) logits; the loss is then the token-weighted mean of the scoring.
        return token_weighted_loss

    def trainer_callbacks(
        self, prepared: Prepared, tokenizer, recipe: Recipe, run_path: Path
    ) -> list:
        return [PerplexityCallback()]

    def evaluate_base(
        self, source, tokenizer, splits, info, recipe: Recipe
    ) -> dict[str, dict[str, Any]]:
        model = base_language_model(source, recipe)
        try:
            return {
                split: self.evaluate(model, tokenizer, rows, info, recipe, split)
                for split, rows in splits.items()
            }
        finally:
            del model  # scored: its GPU memory goes back before training needs it
            devices.empty_cache()

    def evaluate(self, model, tokenizer, rows, info, recipe: Recipe, split: str) -> dict[str, Any]:
        raise NotImplementedError

    def load_tuned(
        self, run_dir: Path, source: ModelSource, info: dict, method: str, tokenizer, recipe: Recipe
    ):
        if method == "lora":
            base = load_causal_lm(source.path, trust_remote_code=recipe.trust_remote_code)
            return PeftModel.from_pretrained(base, run_dir / "adapter")
        return load_causal_lm(run_dir / "model", trust_remote_code=recipe.trust_remote_code)

    def system_prompt(self, recipe: Recipe) -> str | None:
        """The system message every prompt gets (training, generation, serving)."""
        return recipe.sft.system_prompt

    def answer_tokens(self, recipe: Recipe) -> int:
        """Longest answer `predict` generates."""
        return recipe.sft.max_new_tokens

    def chat(
        self, model, tokenizer, messages: list[dict], info: dict, recipe: Recipe, sampling: Sampling
    ) -> Generation:
        """The next assistant turn of a conversation, rendered with the model's chat template."""
        eot = info["end_of_turn"] if "end_of_turn" in info else end_of_turn(tokenizer)
        prompt = encode_prompt(tokenizer, with_system_prompt(messages, self.system_prompt(recipe)))
        return generate(model, tokenizer, [prompt], stop_token_ids(tokenizer, eot), sampling)[0]

    def predict(
        self, model, tokenizer, inputs: list, info: dict, recipe: Recipe
    ) -> list[dict[str, Any]]:
        """One completion per input (greedy, max_new_tokens from the recipe's sft section)."""
        sampling = Sampling(max_new_tokens=self.answer_tokens(recipe))
        return [
            {"completion": g.text, "stopped": g.stopped}
            for g in self.generate(model, tokenizer, inputs, info, recipe, sampling)
        ]
