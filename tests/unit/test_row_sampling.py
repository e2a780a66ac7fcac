"""The server's per-row sampling (deploy/server/rows.py: RowSampling) transforms each row's scores
exactly as transformers' own warpers do for that row alone, in the order `generate` applies them
(logit bias, temperature, top_k, top_p); a greedy row keeps only its likeliest token."""

from __future__ import annotations

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tuneforge.deploy.server.rows import Row, RowSampling


def _row(temperature: float, top_p: float, bias: dict[int, float] | None = None) -> Row:
    return Row([1], 4, temperature, top_p, on_done=lambda _: None, logit_bias=bias or {})


def _alone(scores: torch.Tensor, row: Row, top_k: int) -> torch.Tensor:
    scores = scores.clone()
    for token, value in row.logit_bias.items():
        scores[0, token] += value
    ids = torch.zeros((1, 1), dtype=torch.long)
    if row.temperature != 1.0:
        scores = TemperatureLogitsWarper(row.temperature)(ids, scores)
    scores = TopKLogitsWarper(top_k)(ids, scores)
    if row.top_p < 1.0:
        scores = TopPLogitsWarper(row.top_p)(ids, scores)
    return scores


def test_each_row_is_warped_as_it_would_be_alone():
    torch.manual_seed(0)
    scores = torch.randn(4, 300) * 3
    rows = [
        _row(0.0, 1.0, {5: 4.0}),  # greedy, biased
        _row(0.7, 0.9),
        _row(1.3, 1.0, {7: -100.0, 9: 2.0}),
        _row(1.0, 0.5),
    ]
    out = RowSampling(rows, top_k=50)(torch.zeros((4, 1), dtype=torch.long), scores.clone())
    greedy = scores[0].clone()
    greedy[5] += 4.0
    assert torch.isfinite(out[0]).sum() == 1 and out[0].argmax() == greedy.argmax()
    for i in range(1, 4):
        want = _alone(scores[i : i + 1], rows[i], 50)[0]
        assert torch.equal(torch.isinf(out[i]), torch.isinf(want)), i
        kept = torch.isfinite(want)
        assert torch.allclose(out[i][kept], want[kept]), i


def test_an_all_greedy_batch_only_gets_its_biases():
    scores = torch.randn(2, 50)
    rows = [_row(0.0, 1.0, {3: 1.5}), _row(0.0, 0.0)]
    out = RowSampling(rows, top_k=50)(torch.zeros((2, 1), dtype=torch.long), scores.clone())
    want = scores.clone()
    want[0, 3] += 1.5
    assert torch.equal(out, want)
