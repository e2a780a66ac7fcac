"""Freeze the bottom of the network: train only the top layers, the final norm and the head."""

from __future__ import annotations

from torch import nn

from tuneforge.errors import TuneforgeError


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
