"""Which parameters train: LoRA adapters (PEFT), everything, or only the top layers."""

from __future__ import annotations

from torch import nn

from tuneforge.config import FreezeConfig, LoraConfig, MethodName
from tuneforge.errors import TuneforgeError


def apply_method(
    model: nn.Module,
    method: MethodName,
    lora: LoraConfig,
    freeze: FreezeConfig,
    peft_task_type: str,
) -> nn.Module:
    if method == "lora":
        return apply_lora(model, lora, peft_task_type)
    if method == "freeze":
        freeze_bottom(model, freeze.trainable_layers)
    return model


def apply_lora(model: nn.Module, cfg: LoraConfig, peft_task_type: str) -> nn.Module:
    """Wrap in PEFT LoRA; for sequence classification PEFT also trains and saves the head."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    peft_cfg = PeftLoraConfig(
        task_type=TaskType[peft_task_type],
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise TuneforgeError(f"lora.target_modules: {e}") from None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TuneforgeError("method: freeze: cannot find the transformer layers of this model")


def freeze_bottom(model: nn.Module, trainable_layers: int) -> None:
    """Train the top `trainable_layers` blocks, the final norm and the task head; freeze the rest.

    An output layer tied to the input embeddings stays frozen: training it would train the
    embeddings too.
    """
    layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise TuneforgeError(
            f"freeze.trainable_layers: {trainable_layers} but the model has {len(layers)} layers"
        )
    for p in model.parameters():
        p.requires_grad = False
    for layer in list(layers)[len(layers) - trainable_layers :]:
        for p in layer.parameters():
            p.requires_grad = True
    embedding_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in {"norm", "final_layernorm", "ln_f", "score", "classifier", "lm_head"}:
            for p in module.parameters():
                if id(p) not in embedding_ids:
                    p.requires_grad = True


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
