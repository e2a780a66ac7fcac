"""`training.processes: N` on a CPU: N data-parallel training processes instead of N threads.

Why: on a small CPU, one process with N threads does not use N cores well on the small matrices
of a fine-tuning step (short texts, batches of 16), while N one-thread processes each working on
batch_size / N examples do, at the price of one more copy of the model per process. Measured on
this project's 2-core machine (SmolLM2-135M, LoRA, batches of 16 x 30 tokens): one process with 2
threads 86.6 tokens/s; two 1-thread processes with 8 examples each, side by side, 102 tokens/s.

How: nothing new is hand-written for starting or training them. torch's launcher API (the
elastic agent behind `torchrun --standalone`) starts the processes (`spawn`, one thread each, a
rendezvous store on a free loopback port), forwards Ctrl-C / SIGTERM and ends the rest when one
fails; every process runs the ordinary one-process job, which already works under torchrun
(`distributed.py`: rank 0 alone writes the run). Here in the parent we hand back rank 0's finished
run folder or re-raise its error. While the others are idle (base-model scoring before training, final
evaluation after it) rank 0 uses every core. Measured cost of the launcher against the hand-rolled
spawning it replaced: about a second at start, noise beside a training run
(docs/decisions.md).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from tuneforge import devices
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console

ENV_PROCESSES = "TUNEFORGE_PROCESSES"  # set in each launched process: how many there are


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve(processes: int | str, batch_size: int, *, on_gpu: bool = False) -> int:
    """The number of processes for `training.processes`; `auto` = the most cores that split the
    batch, or 1 when training runs on a GPU (the processes are CPU processes)."""
    if processes != "auto":
        return int(processes)
    if on_gpu:
        return 1
    return max(n for n in range(1, cores() + 1) if batch_size % n == 0)


def wanted(tc, *, on_gpu: bool = False) -> int:
    """How many processes `training.processes` asks for here (`tc`: the recipe's training
    section); 1 inside a process that this module, torchrun or accelerate launch started."""
    if launched() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return resolve(tc.processes, tc.batch_size, on_gpu=on_gpu)


def processes(recipe) -> int:
    """`training.processes` for this call (`launch.wanted`): `auto` is 1 where training runs on a
    GPU, and N > 1 there is refused (those processes are CPU processes)."""
    on_gpu = devices.resolve(recipe.device).type == "cuda"
    n = wanted(recipe.training, on_gpu=on_gpu)
    if n > 1 and on_gpu:
        raise TuneforgeError(
            f"training.processes: {n} CPU processes asked for, but training runs on the CUDA GPU",
            hint="set training.processes to 1 or auto (one process per GPU; torchrun --nproc_per_node N "
            "or accelerate launch for several GPUs), or device: cpu to train on the CPU's cores",
        )
    return n


def launched() -> int:
    """How many processes `run` started for this run (1 when it did not start this process)."""
    return int(os.environ.get(ENV_PROCESSES, "1"))


def per_process_batch(batch_size: int) -> int:
    """Examples each process takes of a step's `batch_size` (the recipe's batch is the step's)."""
    return batch_size // launched()


@contextmanager
def all_cores():
    """Rank 0 alone at work (the other processes wait in a collective): use every core meanwhile."""
    if launched() <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(n: int, target, job):
    """Run `target(job)` in `n` processes (`entry.py` passes its one-process entry point);
    returns rank 0's finished run folder.

    torch's launcher (the elastic agent `torchrun` runs, here in this process) starts them: it
    gives each its rank, world size and rendezvous store, forwards SIGTERM / SIGINT to them, ends
    the others as soon as one fails, and its children get SIGINT if this process dies, even by
    SIGKILL. Each process leaves its outcome in a file here (the launcher hands back return values
    only when every process succeeded): rank 0's finished run folder, or the error to re-raise.
    """
    threads = max(1, cores() // n)
    console.print(f"Training in {n} processes of {threads} thread(s) each (training.processes)")
    with tempfile.TemporaryDirectory(prefix="tuneforge-launch-") as scratch:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=n,
            run_id=f"tuneforge-{uuid.uuid4().hex}",
            rdzv_backend="c10d",  # torchrun --standalone: a store on a free loopback port
            rdzv_endpoint="127.0.0.1:0",
            max_restarts=0,  # a failed run is resumed by the user, not restarted in a loop
            start_method="spawn",  # fresh interpreters: no forked torch thread pools
            logs_specs=DefaultLogsSpecs(log_dir=scratch),
        )
        interrupted = False
        with _launcher_quiet():  # its failure report repeats what the processes said
            try:
                elastic_launch(config, _process_main)(threads, target, job, scratch)
            except ChildFailedError:
                pass  # the processes' own outcomes say why
            except SignalException:  # SIGTERM / Ctrl-C: handed on to the processes, now ended
                interrupted = True
        outcomes = _outcomes(Path(scratch), n)
    kind, finished = outcomes.get(0, (None, None))
    if kind == "ok" and finished is not None:
        return Path(finished)
    for rank in sorted(outcomes):
        kind, payload = outcomes[rank]
        if kind == "error":
            raise unpickled(payload)
    if interrupted or any(kind == "interrupted" for kind, _ in outcomes.values()):
        raise KeyboardInterrupt
    said = ", ".join(f"rank {r}: {outcomes.get(r, ('no outcome',))[0]}" for r in range(n))
    raise TuneforgeError(f"training processes ended without a finished run ({said})")


@contextmanager
def _launcher_quiet():
    log = logging.getLogger("torch.distributed.elastic")
    before = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(before)


def interrupt_once(signum, frame) -> None:
    """A signal handler for a launched process: the first SIGTERM / SIGINT interrupts the job (the
    run is marked interrupted); the launcher's own forwarded copy of it, arriving while that is
    written, is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _process_main(threads: int, target, job, scratch: str) -> None:
    rank = int(os.environ["RANK"])
    os.environ.update(
        OMP_NUM_THREADS=str(threads),
        # CPU training processes (a GPU run is one process): hidden GPUs keep every rank's device,
        # process group (gloo) and precision those of the CPU, as `device: cpu` asked.
        CUDA_VISIBLE_DEVICES="",
        **{ENV_PROCESSES: os.environ["WORLD_SIZE"]},
    )
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, interrupt_once)
    signal.signal(signal.SIGTERM, interrupt_once)
    outcome = Path(scratch) / f"rank{rank}.outcome"
    finished = _exit_without_teardown()  # registered first: runs after the job's exit handlers
    try:
        run = target(job)
    except KeyboardInterrupt:
        _leave(outcome, "interrupted", None)
        raise SystemExit(130) from None
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which re-raises it
        if not isinstance(e, TuneforgeError):  # a bug: keep where it happened
            traceback.print_exc()
        _leave(outcome, "error", picklable(e))
        raise SystemExit(1) from None
    _leave(outcome, "ok", str(run) if run is not None else None)
    finished.set()


def _exit_without_teardown() -> threading.Event:
    """Once set, the event ends this process at exit without the interpreter's teardown of every
    module and object: measured 1.1-1.2 s for a process that imported the job, spent while the
    user waits for the summary (`bench/classification.py`, whole job). The exit handlers the job
    registered (a tracker's upload, ...) still run before it, logs and streams are flushed; an
    unset event (a failed or interrupted process) exits the ordinary way, with its own code."""
    finished = threading.Event()

    def exit_now() -> None:
        if not finished.is_set():
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):  # a closed or broken stream: nothing more to say there
                stream.flush()
        os._exit(0)

    atexit.register(exit_now)
    return finished


def _leave(path: Path, kind: str, payload) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # whole or absent, whenever the process ends
    tmp.write_bytes(pickle.dumps((kind, payload)))
    tmp.replace(path)


def _outcomes(scratch: Path, n: int) -> dict[int, tuple[str, object]]:
    found = {}
    for rank in range(n):
        path = scratch / f"rank{rank}.outcome"
        if path.is_file():
            found[rank] = pickle.loads(path.read_bytes())
    return found


def picklable(e: BaseException) -> bytes:
    try:
        data = pickle.dumps(e)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception type that does not round-trip
        hint = getattr(e, "hint", None)
        return pickle.dumps(TuneforgeError(f"{type(e).__name__}: {e}", hint=hint))


def unpickled(data: bytes) -> BaseException:
    return pickle.loads(data)
