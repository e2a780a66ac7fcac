"""The length-sorted batch sampler: every example once per epoch, seeded, little padding."""

from __future__ import annotations

import random

from tuneforge.training import SortedBatchesSampler


def _padded(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[j] for j in b) * len(b) for b in batches)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    lengths = [random.Random(i).randint(5, 100) for i in range(101)]
    sampler = SortedBatchesSampler(lengths, 8, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert sorted(orders[0]) == list(range(101)) and len(sampler) == 101
    assert orders[0] == orders[2]  # exact resume: the order depends on seed + epoch only
    assert orders[0] != orders[1]  # a new epoch, a new order
    other = SortedBatchesSampler(lengths, 8, seed=4)
    assert list(other) != orders[0]


def test_longest_batch_first_and_little_padding():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 30), rng.randint(30, 120)]) for _ in range(400)]
    sampler = SortedBatchesSampler(lengths, 16, seed=0)
    order = list(sampler)
    assert max(lengths) in [lengths[i] for i in order[:16]]
    # within 20% of the least padding possible (all sorted), far below random batches
    best = _padded(sorted(range(400), key=lengths.__getitem__), lengths, 16)
    shuffled = list(range(400))
    rng.shuffle(shuffled)
    assert _padded(order, lengths, 16) < 1.2 * best < _padded(shuffled, lengths, 16)
