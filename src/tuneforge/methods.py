"""Which parameters train: LoRA adapters (PEFT), everything, or only the top layers."""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.config import FreezeConfig, LoraConfig, MethodName
from tuneforge.dropout import use_cheap_dropout
from tuneforge.errors import TuneforgeError
from tuneforge.fused_lora import use_fused_lora


def apply_method(
    model: nn.Module,
    method: MethodName,
    lora: LoraConfig,
    freeze: FreezeConfig,
    peft_task_type: str,
    device: torch.device | None = None,
) -> nn.Module:
    """`device`: where the model will train (None: the CPU); it decides the CPU-only speed-ups."""
    if method == "lora":
        return apply_lora(model, lora, peft_task_type, device)
    if method == "freeze":
        freeze_bottom(model, freeze.trainable_layers)
    return model


def apply_lora(
    model: nn.Module, cfg: LoraConfig, peft_task_type: str, device: torch.device | None = None
) -> nn.Module:
    """Wrap in PEFT LoRA; for sequence classification PEFT also trains and saves the head.

    On a CPU the adapters train faster: see :func:`speed_up_adapters`.
    """
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
        model = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise TuneforgeError(f"lora.target_modules: {e}") from None
    speed_up_adapters(model, device)
    return model


def speed_up_adapters(model: nn.Module, device: torch.device | None = None) -> bool:
    """The same LoRA, cheaper on a CPU: the dropout mask drawn with numpy
    (:class:`~tuneforge.dropout.CheapDropout`) and the adapter branch fused into the frozen
    layer's matmuls (:class:`~tuneforge.fused_lora.FusedLoraLinear`); returns whether applied.

    Only for CPU training, where both were measured (bench/RESULTS.md). On a GPU the mask would be
    drawn on the CPU and copied over every step, and the fusion targets the CPU's memory-bound
    element-wise passes; PEFT's own layers are left as they are there.
    """
    if device is not None and device.type != "cpu":
        return False
    use_cheap_dropout(model)
    use_fused_lora(model)
    return True


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


def enable_gradient_checkpointing(model: nn.Module, method: MethodName) -> None:
    """Recompute each layer in backward instead of keeping its activations.

    With LoRA the embeddings are frozen, so the first checkpointed layer's input would not
    require grad and (with reentrant checkpointing) no gradient would reach the adapters;
    `enable_input_require_grads` makes the embedding output require grad, as PEFT recommends.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora" and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # a KV cache is useless in training and clashes with it


def require_cuda_for(recipe) -> None:
    """bf16/fp16 and a 4-bit base need a CUDA GPU (and bitsandbytes): one clear error otherwise."""
    import importlib.util

    from tuneforge import devices

    tc = recipe.training
    device = devices.resolve(recipe.device)
    on_gpu = device.type == "cuda"
    if on_gpu and device != devices.local_gpu():
        raise TuneforgeError(
            f"device: {recipe.device}: training runs on this process's GPU ({devices.local_gpu()})",
            hint=f"to train on GPU {device.index}, run with CUDA_VISIBLE_DEVICES={device.index} "
            "and device: auto (torchrun / accelerate launch give each process its own GPU)",
        )
    if tc.precision in ("bf16", "fp16") and not on_gpu:
        raise TuneforgeError(
            f"training.precision: {tc.precision} needs a CUDA GPU and "
            + ("none is available" if not torch.cuda.is_available() else "device is cpu"),
            hint="use training.precision: fp32 on a CPU: without native bf16/fp16 arithmetic "
            "(AVX512-BF16/AMX) mixed precision is emulated, measured about 36x slower than fp32",
        )
    if recipe.lora.quantize_base:
        if recipe.method != "lora":
            raise TuneforgeError(
                f"lora.quantize_base: a 4-bit base is for LoRA (QLoRA), not method: {recipe.method}",
                hint="set method: lora (or method: qlora), or remove lora.quantize_base",
            )
        if not on_gpu:
            raise TuneforgeError(
                "lora.quantize_base: 4bit (QLoRA) needs a CUDA GPU and none is available",
                hint="bitsandbytes 4-bit kernels run on CUDA; on a CPU use method: lora without "
                "quantize_base (the 135M default model fits easily in fp32)",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TuneforgeError(
                "lora.quantize_base: 4bit (QLoRA) needs the bitsandbytes package",
                hint="pip install bitsandbytes",
            )


def quantization_config(lora: LoraConfig):
    """The transformers BitsAndBytesConfig for a 4-bit NF4 base (QLoRA), or None."""
    if not lora.quantize_base:
        return None
    from transformers import BitsAndBytesConfig

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
    (fp32 norms and head, input grads for checkpointing). Only reached on CUDA (require_cuda_for).
    """
    import os

    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {
        "quantization_config": quantization_config(recipe.lora),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        "dtype": torch.float32,
        "trust_remote_code": recipe.trust_remote_code,
        "use_safetensors": True,
    }
    if peft_task_type == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(
            source_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            pad_token_id=pad_token_id,
            **kwargs,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(source_path, **kwargs)
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=recipe.training.gradient_checkpointing
    )
