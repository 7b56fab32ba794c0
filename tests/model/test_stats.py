"""Paired statistics on synthetic per-row results with a known difference."""

import math

import numpy as np
import pytest

from sftpipe.model.stats import mean_ci, paired, wilson


def test_paired_finds_a_known_token_weighted_difference():
    rng = np.random.default_rng(1)
    n = 200
    base = rng.normal(2.0, 0.3, n)
    trained = base - 0.05 + rng.normal(0, 0.02, n)  # every row about 0.05 nats better
    tokens = rng.integers(20, 200, n)
    out = paired(base, trained, tokens, seed=3)
    want = float((tokens * (trained - base)).sum() / tokens.sum())
    assert out["delta"] == pytest.approx(want, abs=1e-6)
    assert out["a"] == pytest.approx(float((tokens * base).sum() / tokens.sum()), abs=1e-6)
    assert out["ci_low"] < -0.05 < out["ci_high"] < 0  # holds the truth, excludes zero
    assert out["ci_high"] - out["ci_low"] < 0.01
    assert out["n"] == n and out["improved"] == int((trained < base).sum()) and out["improved"] > 0.95 * n
    assert paired(base, trained, tokens, seed=3) == out  # seeded: the same interval every run


def test_paired_without_a_difference_straddles_zero_and_respects_direction():
    rng = np.random.default_rng(2)
    a = rng.normal(0.5, 0.1, 300)
    b = a + rng.normal(0, 0.05, 300)
    out = paired(a, b, seed=0)
    assert out["ci_low"] < 0 < out["ci_high"]
    acc = paired([0, 0, 1, 1], [1, 1, 1, 0], lower_is_better=False)
    assert acc["delta"] == 0.25 and acc["improved"] == 2 and acc["improved_share"] == 0.5


def test_small_and_empty_inputs():
    assert math.isnan(paired([1.0], [0.5])["ci_low"]) and paired([1.0], [0.5])["delta"] == -0.5
    assert paired([], [])["n"] == 0
    assert mean_ci([1, 0.5, 0, 1])["mean"] == 0.625


def test_wilson_matches_the_textbook_interval():
    w = wilson(8, 10)
    assert w["rate"] == 0.8 and w["ci_low"] == pytest.approx(0.4902, abs=1e-4)
    assert w["ci_high"] == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 20)["ci_low"] == 0 and wilson(0, 20)["ci_high"] > 0.1
