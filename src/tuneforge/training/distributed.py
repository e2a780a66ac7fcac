"""Several processes, one run: what `train` needs under `torchrun` / `accelerate launch`.

The training itself is the transformers Trainer's DDP (through accelerate); this module only
answers "which process am I", lets rank 0 tell the others what it decided (the run directory), and
keeps the other ranks silent. Who does what:

- every rank: read the recipe, tokenise the data, run the data check (same inputs, same verdict:
  a refusal stops every rank, no one waits), build the model and train;
- rank 0 only: the run directory, status, registry, base-model evaluation, final evaluation,
  saved model and report. The other ranks wait for it in their next collective call, which is why
  the process group gets a long timeout (``TUNEFORGE_DIST_TIMEOUT`` seconds, default 6 h) instead
  of torch's 30 minutes; after training they return at once.

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never touches torch.distributed.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tuneforge.progress import console, out

DEFAULT_TIMEOUT_S = 6 * 3600
# The libraries whose log messages the ranks other than 0 keep to themselves (below errors).
QUIET_LIBRARIES = ("transformers", "datasets", "peft", "accelerate", "trl", "torch")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group early (rank 0 must share the run directory before training).

    gloo on CPU, nccl on CUDA, as accelerate would pick; the Trainer then finds the group
    initialised and uses it. The other ranks go silent (:func:`silence`): rank 0 speaks.
    """
    if world_size() <= 1:
        return

    if not is_main():
        silence()
    if dist.is_initialized():
        return
    timeout = timedelta(seconds=float(os.environ.get("TUNEFORGE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def silence() -> None:
    """This rank prints nothing: rank 0 speaks for the run. No console output, progress or
    library bars (TUNEFORGE_QUIET), no Python warnings and no library log messages below errors
    (they would repeat rank 0's, once per process). Errors still surface: the launcher collects
    each rank's (launch.py), torchrun prints the failing rank's traceback."""
    console.quiet = True
    out.quiet = True
    os.environ["TUNEFORGE_QUIET"] = "1"
    warnings.simplefilter("ignore")
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.ERROR)
    # transformers and datasets set their loggers' level when first imported: the same for them
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["DATASETS_VERBOSITY"] = "error"


def share(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (the others pass anything); identity in a single process.

    An exception object shared by rank 0 is raised on the other ranks too, so a rank-0-only
    failure (say, an unwritable output_dir) stops everyone instead of leaving them waiting.
    """
    if world_size() <= 1:
        return value

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException) and not is_main():
        raise box[0]
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
