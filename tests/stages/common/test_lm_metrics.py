"""Validate's language-model metrics on logits laid out as the worker returns them (sample,
batch of 1, position, vocabulary): per-position top-1, KL divergence, padding left out."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common import metrics

SAMPLES, POSITIONS, VOCABULARY, PADDED = 4, 6, 11, 2


def _logits() -> tuple[np.ndarray, np.ndarray, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(SAMPLES, 1, POSITIONS, VOCABULARY)) * 3
    candidate = reference + rng.normal(scale=0.05, size=reference.shape)
    mask = np.ones((SAMPLES, 1, POSITIONS), np.int64)
    mask[::2, :, -PADDED:] = 0
    # at padding positions the candidate says something else entirely
    candidate[mask == 0] = -reference[mask == 0]
    feeds = [{"input_ids": np.zeros((1, POSITIONS), np.int64), "attention_mask": m}
             for m in mask]
    return candidate, reference, feeds


def test_padding_positions_count_in_neither_top1_nor_kl() -> None:
    candidate, reference, feeds = _logits()
    mask = metrics.token_mask(feeds, candidate)
    assert mask is not None
    masked = metrics.agreement(candidate, reference, mask)
    assert masked["top1_agreement"] == 1.0
    assert 0 < masked["kl_divergence"] < 0.01
    unmasked = metrics.agreement(candidate, reference)
    assert unmasked["top1_agreement"] <= 1 - PADDED * 2 / (SAMPLES * POSITIONS)
    assert unmasked["kl_divergence"] > 10 * masked["kl_divergence"]


def test_per_sample_outputs_score_as_the_stacked_batch_does() -> None:
    candidate, reference, feeds = _logits()
    stacked = metrics.agreement(candidate, reference, metrics.token_mask(feeds, candidate))
    listed = metrics.agreement(list(candidate), list(reference),
                               metrics.token_mask(feeds, list(candidate)))
    assert listed == pytest.approx(stacked)


def test_kl_is_exact_on_large_logits() -> None:
    candidate, reference, _ = _logits()
    shifted = metrics.kl_divergence(reference + 1e4, candidate - 1e4)
    np.testing.assert_allclose(shifted, metrics.kl_divergence(reference, candidate), rtol=1e-9)
    p = np.exp(reference) / np.exp(reference).sum(-1, keepdims=True)
    q = np.exp(candidate) / np.exp(candidate).sum(-1, keepdims=True)
    np.testing.assert_allclose(metrics.kl_divergence(reference, candidate),
                               (p * np.log(p / q)).sum(-1), rtol=1e-9)


def test_outputs_without_positions_get_no_kl_and_no_mask() -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(SAMPLES, 1, 8))
    feeds = [{"attention_mask": np.ones((1, 5), np.int64)} for _ in range(SAMPLES)]
    assert metrics.token_mask(feeds, embeddings) is None
    assert "kl_divergence" not in metrics.agreement(embeddings, embeddings)
