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
    """Batches of similar length in a random order, drawn from a per-epoch seed.

    Less padding than random batches: the epoch is sorted by length times a random factor in
    [1, 1 + jitter), cut into batches, and the batches are shuffled, the one with the longest
    example first so a batch too large for memory fails at once. `jitter` sets how similar the
    lengths are. On the sentiment recipe's reviews, padded tokens per real token in batches of
    16 (pairs of reviews that share a batch again in the next epoch): 1.09 at 0.05 (48%: the
    lengths in a batch all but equal, much the same batches every epoch), 1.15 at 0.25 (20%,
    the recipe default), 1.33 at 1 (9%; transformers' LengthGroupedSampler, which sorts within
    mega-batches, 1.34), 1.88 for random batches. Over ten seeds 0.05 was 1-2 points less
    accurate than random batches; 0.25 and 1 were as accurate as they were (bench/RESULTS.md).
    Exact resume: the order is a function of (seed + epoch) alone, set through `set_epoch`,
    which the Trainer calls every epoch; never of the global RNG, which dropout advances.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, jitter: float):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.jitter = jitter
        self.epoch = 0

    def set_epoch(self, epoch) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        noise = 1 + self.jitter * torch.rand(len(self.lengths), generator=g)
        keys = torch.tensor(self.lengths, dtype=torch.float64) * noise
        order = torch.argsort(keys, descending=True, stable=True).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # first the batch that holds the longest example (with jitter, not always the first cut)
        first = max(range(len(order)), key=lambda k: self.lengths[order[k]]) // self.batch_size
        others = batches[:first] + batches[first + 1 :]
        rest = [others[i] for i in torch.randperm(len(others), generator=g).tolist()]
        for batch in [batches[first], *rest]:
            yield from batch
