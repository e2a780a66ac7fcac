"""Batch orders: length-sorted training batches in a seeded random order (little padding, exact
resume), and evaluation rows sorted by length."""

from __future__ import annotations

import torch


def eval_order(lengths: list[int], batch_size: int) -> list[int]:
    """Row indices for evaluation: sorted by length, so batches carry the least padding.

    Shortest first, and the `len % batch_size` shortest rows last, as the one short batch. Under
    DDP accelerate evens the ranks out by completing that batch, and adding more, with rows from
    the start of the order; so those repeated rows are the shortest, the cheapest to redo.
    (Longest first, the repeats were the longest rows, and the last step of a two-process
    evaluation of the sentiment validation set took 12 s of its 29.)
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    rest = len(order) % batch_size
    return order[rest:] + order[:rest]


class SortedBatchesSampler:
    """Batches of near-equal length in a random order, drawn from a per-epoch seed.

    Less padding: transformers' LengthGroupedSampler sorts only within mega-batches (a quarter of
    a few hundred examples), which leaves about a third of every batch of short reviews as
    padding (measured on the sentiment recipe: 1.34 padded tokens per real token, against 1.88
    for random batches). Here the whole epoch is sorted by length times a random factor in
    [1, 1.05) (near-equal lengths mix differently each epoch), cut into batches, and the batches
    are shuffled, the longest first so a batch too large for memory fails at once: 1.09 (1.13
    with a factor in [1, 1.2); 1.08 exactly sorted; sft recipe alert_triage: 1.38 random, 1.08
    LengthGroupedSampler, 1.08 here).
    Exact resume: the order is a function of (seed + epoch) alone, set through `set_epoch`,
    which the Trainer calls every epoch; never of the global RNG, which dropout advances.
    """

    JITTER = 0.05

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        noise = 1 + self.JITTER * torch.rand(len(self.lengths), generator=g)
        keys = torch.tensor(self.lengths, dtype=torch.float64) * noise
        order = torch.argsort(keys, descending=True, stable=True).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rest = [batches[i] for i in (torch.randperm(len(batches) - 1, generator=g) + 1).tolist()]
        for batch in batches[:1] + rest:
            yield from batch
