"""training.processes: how many processes, and errors that cross the process boundary intact."""

from __future__ import annotations

import os
import pickle

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.training import launch


@pytest.mark.parametrize(
    ("cores", "batch", "expected"),
    [(2, 16, 2), (4, 16, 4), (3, 16, 2), (8, 12, 6), (2, 7, 1), (1, 16, 1)],
)
def test_auto_is_the_most_cores_that_split_the_batch(monkeypatch, cores, batch, expected):
    monkeypatch.setattr(launch, "cores", lambda: cores)
    assert launch.resolve("auto", batch) == expected
    assert batch % expected == 0


def test_a_number_is_taken_as_given():
    assert launch.resolve(3, 9) == 3


def test_per_process_batch_only_when_launched(monkeypatch):
    monkeypatch.delenv(launch.ENV_PROCESSES, raising=False)
    assert launch.per_process_batch(16) == 16  # one process, or torchrun: batch is per process
    monkeypatch.setenv(launch.ENV_PROCESSES, "2")
    assert launch.per_process_batch(16) == 8


def test_user_error_keeps_message_and_hint():
    e = launch.unpickled(launch.picklable(TuneforgeError("bad column 'text'", hint="rename it")))
    assert isinstance(e, TuneforgeError)
    assert (e.message, e.hint) == ("bad column 'text'", "rename it")


class _Unpicklable(Exception):
    def __init__(self, a, b):  # pickle calls cls(*args) with one arg: fails to load
        super().__init__(f"{a}-{b}")


def test_exception_that_does_not_pickle_becomes_a_message():
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(_Unpicklable(1, 2)))
    e = launch.unpickled(launch.picklable(_Unpicklable(1, 2)))
    assert isinstance(e, TuneforgeError) and str(e) == "_Unpicklable: 1-2"


def test_wanted_is_one_inside_launched_processes(monkeypatch):
    from tuneforge.config import TrainingConfig

    monkeypatch.setattr(launch, "cores", lambda: 2)
    tc = TrainingConfig(batch_size=16, processes="auto")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(launch.ENV_PROCESSES, raising=False)
    assert launch.wanted(tc) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / accelerate launch: already one per device
    assert launch.wanted(tc) == 1
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv(launch.ENV_PROCESSES, "2")  # a process launch.run started
    assert launch.wanted(tc) == 1


def _finishes_nothing(job):
    return None


def _fails_on_rank_one(job):
    if os.environ["RANK"] == "1":
        raise TuneforgeError(f"bad column in {job}", hint="rename it")
    return None


def test_launched_processes_without_a_finished_run_are_one_clear_error():
    with pytest.raises(TuneforgeError, match=r"without a finished run \(rank 0: ok, rank 1: ok\)"):
        launch.run(2, _finishes_nothing, "job")


def test_an_error_in_one_launched_process_reaches_the_caller_as_itself():
    with pytest.raises(TuneforgeError, match="bad column in job") as e:
        launch.run(2, _fails_on_rank_one, "job")
    assert e.value.hint == "rename it"
