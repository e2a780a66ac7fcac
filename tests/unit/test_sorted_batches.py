"""The length-sorted batch sampler: every example once per epoch, seeded, little padding."""

from __future__ import annotations

import random

from tuneforge.training.samplers import SortedBatchesSampler


def _padded(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[j] for j in b) * len(b) for b in batches)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    lengths = [random.Random(i).randint(5, 100) for i in range(101)]
    sampler = SortedBatchesSampler(lengths, 8, seed=3, jitter=0.25)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert sorted(orders[0]) == list(range(101)) and len(sampler) == 101
    assert orders[0] == orders[2]  # exact resume: the order depends on seed + epoch only
    assert orders[0] != orders[1]  # a new epoch, a new order
    other = SortedBatchesSampler(lengths, 8, seed=4, jitter=0.25)
    assert list(other) != orders[0]


def _pairs(order: list[int], batch_size: int) -> set[tuple[int, int]]:
    """The pairs of examples that share a batch."""
    batches = [sorted(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    return {(a, b) for batch in batches for a in batch for b in batch if a < b}


def test_longest_batch_first_and_little_padding():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 30), rng.randint(30, 120)]) for _ in range(400)]
    best = _padded(sorted(range(400), key=lengths.__getitem__), lengths, 16)
    shuffled = list(range(400))
    rng.shuffle(shuffled)
    padded = {}
    for jitter in (0.05, 0.25, 1.0):
        order = list(SortedBatchesSampler(lengths, 16, seed=0, jitter=jitter))
        assert max(lengths) in [lengths[i] for i in order[:16]]
        padded[jitter] = _padded(order, lengths, 16)
    # the default factor of up to 1.25: more than a near-exact sort, still within 20% of the
    # least padding possible (all sorted); up to 2: more, and still well below random batches
    assert best <= padded[0.05] < padded[0.25] < 1.2 * best < padded[1.0]
    assert padded[1.0] < 0.8 * _padded(shuffled, lengths, 16)


def test_jitter_regroups_the_examples_each_epoch():
    """With a factor of up to 1.25 (the default) or 2 the examples meet other examples in the
    next epoch's batches; with a near-exact sort many of the same pairs share a batch again."""
    rng = random.Random(2)
    lengths = [rng.randint(5, 120) for _ in range(400)]
    kept = {}
    for jitter in (0.05, 0.25, 1.0):
        sampler = SortedBatchesSampler(lengths, 16, seed=0, jitter=jitter)
        first = _pairs(list(sampler), 16)
        sampler.set_epoch(1)
        kept[jitter] = len(first & _pairs(list(sampler), 16)) / len(first)
    assert kept[1.0] < kept[0.25] < 0.6 * kept[0.05]


def test_evaluation_order_sorted_with_the_shortest_rows_in_the_short_batch():
    from tuneforge.training.samplers import eval_order

    lengths = [3, 9, 1, 9, 5, 2, 7]
    # ascending, and the 7 % 3 = 1 shortest row moved last (the short batch)
    assert eval_order(lengths, 3) == [5, 0, 4, 6, 1, 3, 2]
    assert eval_order(lengths, 7) == [2, 5, 0, 4, 6, 1, 3]
    rng = random.Random(1)
    lengths = [rng.randint(5, 120) for _ in range(100)]
    order = eval_order(lengths, 16)
    assert sorted(order) == list(range(100))
    assert [lengths[i] for i in order[:96]] == sorted(lengths)[4:]
    assert max(lengths[i] for i in order[96:]) == sorted(lengths)[3]  # the short batch: 4 shortest
    shuffled = list(range(100))
    rng.shuffle(shuffled)
    assert _padded(order, lengths, 16) < _padded(shuffled, lengths, 16)


def test_trainer_evaluates_in_sorted_order(tiny_model, tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tuneforge.training.samplers import eval_order
    from tuneforge.training.trainer import FineTuningTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path),
        train_sampling_strategy="group_by_length",
        use_cpu=True,
        report_to=[],
        per_device_eval_batch_size=4,
    )
    trainer = FineTuningTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        processing_class=tiny_tokenizer,
    )
    lengths = [random.Random(i).randint(2, 40) for i in range(50)]
    data = Dataset.from_dict({"input_ids": [[5] * n for n in lengths]})
    expected = eval_order(lengths, 4)
    assert list(trainer._get_eval_sampler(data)) == expected
    # through the Trainer's own eval DataLoader: rows arrive in that order
    seen = [
        n for b in trainer.get_eval_dataloader(data) for n in b["attention_mask"].sum(1).tolist()
    ]
    assert seen == [lengths[i] for i in expected]
