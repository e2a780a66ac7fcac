"""QLoRA: LoRA adapters on a base model loaded in 4-bit NF4 through bitsandbytes (CUDA only)."""

from __future__ import annotations

import os

import torch
from peft import prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BitsAndBytesConfig,
)

from tuneforge.config import LoraConfig
from tuneforge.models import classifier_head


def quantization_config(lora: LoraConfig):
    """The transformers BitsAndBytesConfig for a 4-bit NF4 base (QLoRA), or None."""
    if not lora.quantize_base:
        return None
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_quantized_base(source_path, recipe, peft_task_type: str, labels=None, pad_token_id=None):
    """The base model with 4-bit NF4 linear layers on this process's GPU, ready for LoRA (QLoRA).

    The same heads as the fp32 loaders (models.load_causal_lm / load_sequence_classifier), loaded
    through transformers' bitsandbytes integration, then PEFT's `prepare_model_for_kbit_training`
    (fp32 norms and head; checkpointing, with its input grads, comes after, from `build_model`).
    Only reached on CUDA (require_hardware_for).
    """
    kwargs = {
        "quantization_config": quantization_config(recipe.lora),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        "dtype": torch.float32,
        "trust_remote_code": recipe.trust_remote_code,
        "use_safetensors": True,
    }
    if peft_task_type == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(
            source_path, **classifier_head(labels, pad_token_id), **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(source_path, **kwargs)
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id
    # Checkpointing is not PEFT's to turn on: it would call transformers' deprecated
    # `gradient_checkpointing_enable` (a FutureWarning). `training.job.build_model` turns it on
    # right after, as for every method (`methods.enable_gradient_checkpointing`: input grads too).
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
