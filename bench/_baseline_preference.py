"""The baseline: DPO with LoRA as a user writes it from TRL's documentation.

`AutoModelForCausalLM` + `DPOTrainer(model, args=DPOConfig(...), train_dataset=...,
processing_class=tokenizer, peft_config=LoraConfig(...))` on a `datasets.Dataset` of
conversational `{"prompt", "chosen", "rejected"}` rows (TRL renders and tokenises them with the
tokenizer's chat template), the reference model being the same weights with the adapter off.
Random batches, evaluation and a checkpoint every `eval_steps` (else every epoch), the best
model (TRL's eval loss) loaded at the end.

Three of DPOConfig's defaults are set to the recipe's values rather than left as TRL has them:
`bf16` (TRL: on whenever fp16 is off, CPUs included, where it runs about 36x slower than fp32),
`activation_checkpointing` (TRL: on) and `disable_dropout` (TRL: on, which would silently zero
the LoRA dropout both arms are given). The hyper-parameters are the benchmark's, not TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train_baseline(
    model_path: str | Path,
    train_file: str | Path,
    validation_file: str | Path,
    output_dir: str | Path,
    *,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    epochs: float = 1,
    max_steps: int = -1,
    batch_size: int = 8,
    eval_batch_size: int | None = None,
    learning_rate: float = 1e-4,
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    lr_scheduler: str = "linear",
    max_length: int = 256,
    eval_steps: int | None = None,
    seed: int = 0,
    beta: float = 0.1,
    lora_r: int = 16,
    lora_alpha: float = 32,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    bf16: bool = False,
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def conversational(example):
        return {
            "prompt": as_messages(example[prompt_field], "user"),
            "chosen": as_messages(example[chosen_field], "assistant"),
            "rejected": as_messages(example[rejected_field], "assistant"),
        }

    data = load_dataset(
        "json", data_files={"train": str(train_file), "validation": str(validation_file)}
    )
    data = data.map(conversational, remove_columns=data["train"].column_names)

    model = AutoModelForCausalLM.from_pretrained(model_path)
    strategy = "steps" if eval_steps else "epoch"
    args = DPOConfig(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size or batch_size,
        num_train_epochs=epochs,
        max_steps=max_steps,
        weight_decay=weight_decay,
        warmup_steps=warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type=lr_scheduler,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=eval_steps,
        save_steps=eval_steps,
        load_best_model_at_end=True,
        seed=seed,
        beta=beta,
        max_length=max_length,
        bf16=bf16,
        activation_checkpointing=activation_checkpointing,
        disable_dropout=False,
        report_to="none",
    )
    trainer = DPOTrainer(
        model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="CAUSAL_LM",
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
        ),
    )
    trainer.train()
    final = trainer.evaluate()

    rows = [
        (r["prompt"], r["chosen"], r["rejected"]) for r in data["validation"]
    ]  # conversational, as trained on
    quality = preference_accuracy(
        trainer.model, tokenizer, rows, max_length, eval_batch_size or batch_size
    )
    quality["trl_eval_loss"] = final["eval_loss"]
    quality["trl_eval_reward_accuracy"] = final.get("eval_rewards/accuracies")
    return quality


def as_messages(value, role: str) -> list[dict[str, str]]:
    """A text column as one message of `role` (a column of messages is kept as it is)."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def preference_accuracy(model, tokenizer, rows, max_length: int, batch_size: int) -> dict:
    """Share of (prompt, chosen, rejected) pairs where the model gives the chosen answer the higher
    mean log-probability per answer token; the mean margin beside it.

    The answer's tokens are those TRL trains on: the chat template's rendering of prompt + answer
    after the rendering of the prompt with the generation prompt, cut to `max_length` in all.
    The benchmark scores both arms' final models with this one function.
    """
    import torch

    def ids(messages, **kwargs) -> list[int]:
        out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    sequences = []  # (all ids, index of the first answer token), chosen then rejected per pair
    for prompt, chosen, rejected in rows:
        prompt = as_messages(prompt, "user")
        start = len(ids(prompt, add_generation_prompt=True))
        for answer in (chosen, rejected):
            full = ids(prompt + as_messages(answer, "assistant"))[:max_length]
            sequences.append((full, start))

    means = []
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i : i + batch_size]
            width = max(len(s) for s, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            answer = torch.zeros_like(input_ids, dtype=torch.bool)
            for r, (seq, start) in enumerate(batch):
                input_ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
                answer[r, start : len(seq)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            picked = logp.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            where = answer[:, 1:].to(device)
            sums = (picked * where).sum(dim=1)
            counts = where.sum(dim=1).clamp(min=1)
            means.extend((sums / counts).tolist())
    chosen, rejected = means[0::2], means[1::2]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        "logp_margin": sum(margins) / len(margins),
        "pairs": len(margins),
    }
