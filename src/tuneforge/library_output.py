"""What the libraries under tuneforge print, made fit for a terminal and a CI log alike.

Their progress bars follow tuneforge's choice (:func:`tuneforge.progress.sync_library_bars`), and
the few warnings a tuneforge user can neither act on nor avoid are silenced by their exact
message, each with the reason. Everything else is shown, once per place it comes from (Python's
default). Where tuneforge itself caused a warning, the cause is fixed instead (the current
transformers names: ``activation_checkpointing``, ``activation_checkpointing_enable``; evaluation
order sorted without datasets' ``Dataset.sort``, see ``tasks/classification.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from collections.abc import Iterator

from tuneforge.progress import bars_enabled, sync_library_bars

# (category, start of the message, why it cannot be fixed where it comes from)
UNACTIONABLE_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (
        FutureWarning,
        "`is_gradient_checkpointing` is deprecated and will be removed in v6",
        "PEFT's PeftModel.__init__ (0.21: every get_peft_model and PeftModel.from_pretrained) and "
        "TRL's disable_gradient_checkpointing read the model's deprecated property; tuneforge "
        "itself uses the current names",
    ),
)

# (logger, start of the message, why)
UNACTIONABLE_LOGS: tuple[tuple[str, str, str], ...] = (
    (
        "transformers.trainer_utils",
        "mtime may not be reliable on this filesystem",
        "the Trainer orders checkpoints by modification time and says so when two were written "
        "within a second (a short run); it then orders them by step, which is what tuneforge needs",
    ),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def tame() -> None:
    """Before work that uses the libraries (idempotent): bars as tuneforge shows them, and the
    unactionable warnings silenced."""
    sync_library_bars()
    for category, message, _why in UNACTIONABLE_WARNINGS:
        # a pattern matched at the message's start; an identical filter is replaced, not added
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name, message, _why in UNACTIONABLE_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages((message,)))


@contextlib.contextmanager
def gguf_conversion_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its "Converting and de-quantizing GGUF tensors" bar with
    tqdm directly, outside the switch `sync_library_bars` turns (a first run's log got hundreds
    of carriage-return updates): while converting, its bar follows :func:`bars_enabled` too."""
    from transformers import modeling_gguf_pytorch_utils as gguf  # deferred: CLI start

    original = gguf.tqdm
    if not bars_enabled():
        gguf.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = original
