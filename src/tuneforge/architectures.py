"""Which model architectures a task can build on: checked from config.json before any compute.

transformers decides which families have a causal-LM class and which a sequence-classification
head (Cohere, Gemma 3n and some 60 others have none); a recipe that pairs a task with a family
lacking its head is refused here, at the start of `train` and `plan`, with one message, instead
of failing inside `from_pretrained` after the data was read and checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError

# head -> (the mapping in transformers.models.auto.modeling_auto, what the head is in words)
HEADS = {
    "causal_lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "a causal language model (decoder)"),
    "sequence_classification": (
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "a sequence-classification head",
    ),
}


def _config(path: Path) -> dict:
    """config.json as a dict ({} where the file is missing or unreadable)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def check_architecture(
    path: Path, head: str, task: str, *, trust_remote_code: bool = False
) -> None:
    """Refuse a base model whose architecture transformers has no `head` class for."""
    from transformers.models.auto import modeling_auto  # deferred: CLI start (transformers)

    mapping, needs = HEADS[head]
    config = _config(path)
    found = config.get("model_type")
    if found is None:
        return  # from_pretrained's own message names what is wrong with the folder
    if trust_remote_code and config.get("auto_map"):
        return  # the model's own code decides
    names: dict[str, str] = getattr(modeling_auto, mapping)
    if found in names:
        return
    raise TuneforgeError(
        f"base_model: task {task} needs {needs}, and transformers has none for the "
        f"{found!r} architecture ({path})",
        hint="use another task (sft can answer with the label as text) or a base model of "
        "another family: llama, mistral, qwen2, qwen3, gemma3_text, phi3 are tested",
    )
