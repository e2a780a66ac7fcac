"""LoRA through PEFT; on a CPU, with cheaper dropout masks and the adapter fused into the frozen
layer's matmuls (same method, same gradients: see `lora_dropout` and `fused_lora`)."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import TaskType, get_peft_model
from torch import nn

from tuneforge.config import LoraConfig
from tuneforge.errors import TuneforgeError
from tuneforge.library_output import tame
from tuneforge.methods.fused_lora import use_fused_lora
from tuneforge.methods.lora_dropout import use_cheap_dropout


def apply_lora(
    model: nn.Module, cfg: LoraConfig, peft_task_type: str, device: torch.device | None = None
) -> nn.Module:
    """Wrap in PEFT LoRA; for sequence classification PEFT also trains and saves the head.

    On a CPU the adapters train faster: see :func:`speed_up_adapters`.
    """
    peft_cfg = PeftLoraConfig(
        task_type=TaskType[peft_task_type],
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
    )
    tame()  # PEFT reads the model's deprecated `is_gradient_checkpointing`: a FutureWarning
    try:
        model = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise TuneforgeError(f"lora.target_modules: {e}") from None
    speed_up_adapters(model, device)
    return model


def speed_up_adapters(model: nn.Module, device: torch.device | None = None) -> bool:
    """The same LoRA, cheaper on a CPU: the dropout mask drawn with numpy
    (:class:`~tuneforge.methods.lora_dropout.CheapDropout`) and the adapter branch fused into the frozen
    layer's matmuls (:class:`~tuneforge.methods.fused_lora.FusedLoraLinear`); returns whether applied.

    Only for CPU training, where both were measured (bench/RESULTS.md). On a GPU the mask would be
    drawn on the CPU and copied over every step, and the fusion targets the CPU's memory-bound
    element-wise passes; PEFT's own layers are left as they are there.
    """
    if device is not None and device.type != "cpu":
        return False
    use_cheap_dropout(model)
    use_fused_lora(model)
    return True
