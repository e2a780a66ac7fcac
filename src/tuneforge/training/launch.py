"""`training.processes: N` on a CPU: N data-parallel training processes instead of N threads.

Why: on a small CPU, one process with N threads does not use N cores well on the small matrices
of a fine-tuning step (short texts, batches of 16), while N one-thread processes each working on
batch_size / N examples do, at the price of one more copy of the model per process. Measured on
this project's 2-core machine (SmolLM2-135M, LoRA, batches of 16 x 30 tokens): one process with 2
threads 86.6 tokens/s; two 1-thread processes with 8 examples each, side by side, 102 tokens/s.

How: nothing new is hand-written for the training itself. This module starts the processes (the
`spawn` start method, one thread each, a free loopback port) with the environment torchrun would
give them, and every process runs the ordinary `training.train`, which already works under
torchrun (`distributed.py`: rank 0 alone writes the run). Here in the parent it waits, forwards
Ctrl-C / SIGTERM, and hands back rank 0's finished run or re-raises its error. While the others
are idle (base-model scoring before training, final evaluation after it) rank 0 uses every core.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import traceback
from contextlib import contextmanager, suppress
from pathlib import Path

from tuneforge import devices
from tuneforge.errors import TuneforgeError

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
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, target, job):
    """Run `target(job)` in `n` processes (the job module passes its one-process entry point);
    returns rank 0's :class:`tuneforge.runs.run.Run`."""
    import multiprocessing

    from tuneforge.progress import console
    from tuneforge.runs.run import Run

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    results = ctx.SimpleQueue()
    port = _free_port()
    threads = max(1, cores() // n)
    console.print(f"Training in {n} processes of {threads} thread(s) each (training.processes)")
    procs = [
        ctx.Process(
            target=_process_main,
            args=(rank, n, port, threads, target, job, results, os.getpid()),
            name=f"tuneforge-rank{rank}",
        )
        for rank in range(n)
    ]
    previous = signal.signal(signal.SIGTERM, _forward_sigterm(procs))
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C reached every process of the terminal's group too
        for p in procs:
            p.join()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    outcomes = {}
    while not results.empty():
        rank, kind, payload = results.get()
        outcomes[rank] = (kind, payload)
    if outcomes.get(0, (None,))[0] == "ok":
        return Run.load(Path(outcomes[0][1]))
    for rank in sorted(outcomes):
        kind, payload = outcomes[rank]
        if kind == "error":
            raise unpickled(payload)
    if any(kind == "interrupted" for kind, _ in outcomes.values()):
        raise KeyboardInterrupt
    codes = ", ".join(f"rank {r}: exit code {p.exitcode}" for r, p in enumerate(procs))
    raise TuneforgeError(f"training processes ended without a result ({codes})")


def _forward_sigterm(procs):
    def handler(signum, frame):
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: rank 0 marks the run interrupted, as in one process
        raise KeyboardInterrupt

    return handler


def _process_main(rank, world, port, threads, target, job, results, parent) -> None:
    _end_with_parent(parent)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),
        # CPU training processes (a GPU run is one process): hidden GPUs keep every rank's device,
        # process group (gloo) and precision those of the CPU, as `device: cpu` asked.
        CUDA_VISIBLE_DEVICES="",
        **{ENV_PROCESSES: str(world)},
    )
    import torch

    torch.set_num_threads(threads)
    try:
        run = target(job)
    except KeyboardInterrupt:
        _report(results, (rank, "interrupted", None))
        raise SystemExit(130) from None
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which re-raises it
        if not isinstance(e, TuneforgeError):  # a bug: keep where it happened
            traceback.print_exc()
        _report(results, (rank, "error", picklable(e)))
        raise SystemExit(1) from None
    if run is not None:
        _report(results, (rank, "ok", str(run.path)))


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process when the parent dies, even by SIGKILL (Linux `PR_SET_PDEATHSIG`).

    Without it, `kill -9` of `tuneforge train` left the training processes running on, still
    writing the run. SIGTERM ends them as it ends one process: the run is marked interrupted and
    its last checkpoint resumes.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _report(results, outcome) -> None:
    with suppress(OSError):  # the parent is gone (killed): nobody to tell
        results.put(outcome)


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
