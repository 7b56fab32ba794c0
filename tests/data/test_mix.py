"""mix: weights, up- and down-sampling, exclusion, accounting, and no leak into val/test."""

from collections import Counter

import pyarrow.parquet as pq
import pytest

from sftpipe.core.accounting import Tally
from sftpipe.data.mix import MixError, MixParams, mix_eval, mix_train, sample, targets
from sftpipe.data.mix import _rng as rng
from sftpipe.data.mix import run as mix_run
from tests.conftest import format_table


def table(**sizes):
    return format_table([{"id": f"{s}/{i}", "source": s} for s, n in sizes.items() for i in range(n)])


def _targets(available, weights=None, size=None, **kw):
    return targets(available, MixParams(weights=weights or {}, train_size=size, **kw))[0]


def test_multipliers_keep_natural_proportions_and_scale_one_source():
    assert _targets({"a": 100, "b": 50}) == {"a": 100, "b": 50}  # every weight 1: as it is
    assert _targets({"a": 100, "b": 50}, {"b": 2}) == {"a": 100, "b": 100}  # b doubled, a untouched
    assert _targets({"a": 100, "b": 2}, {"b": 1.01}) == {"a": 100, "b": 2}  # no jump at 1.01
    assert _targets({"a": 100, "b": 50}, {"b": 0}) == {"a": 100}
    assert _targets({"a": 100, "b": 50}, {"a": 0.5}, 150) == {"a": 75, "b": 75}  # scaled to size


def test_shares_split_the_total_by_weight_whatever_the_sizes():
    assert _targets({"a": 100, "b": 50}, {"a": 1, "b": 3}, 200, weighting="share") == {"a": 50, "b": 150}
    assert _targets({"a": 10, "b": 10, "c": 10}, {}, 10, weighting="share") == {"a": 4, "b": 3, "c": 3}
    assert _targets({"a": 100, "b": 50}, {}, None, weighting="share") == {"a": 75, "b": 75}


def test_max_repeat_caps_upsampling_and_says_so(capsys):
    want, capped = targets({"a": 100, "b": 2}, MixParams(weights={"b": 50}, max_repeat=4))
    assert want == {"a": 100, "b": 8} and capped == {"b": 92}
    assert "source b would repeat" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_repeat"):
        MixParams(max_repeat=0.5)


def test_all_zero_weights_fail_and_unknown_sources_are_warned_about(tmp_path, capsys):
    with pytest.raises(MixError, match="nothing to train on"):
        _targets({"a": 1}, {"a": 0})
    assert _targets({"a": 5}, {"c": 2}) == {"a": 5}  # a known source with no train rows takes none
    (tmp_path / "in").mkdir()
    for split in ("train", "val", "test"):
        pq.write_table(table(a=3), tmp_path / "in" / f"{split}.parquet")
    tally, _ = mix_run(MixParams(weights={"c": 1}), 1, tmp_path / "in", tmp_path / "out", known=["a"])
    assert tally.n_out == 9 and "no source named c (have: a)" in capsys.readouterr().err


def test_sample_repeats_whole_copies_then_a_subset():
    picks = sample(3, 7, rng(0, "x"))
    assert sorted(Counter(i for i, _ in picks).values()) == [2, 2, 3]
    assert sorted(c for _, c in picks) == [0, 0, 0, 1, 1, 1, 2]
    assert len(set(sample(10, 4, rng(0, "x")))) == 4


def test_mix_train_up_and_down_sampling_and_accounting():
    t = Tally()
    mixed, shares = mix_train(
        table(a=10, b=40),
        MixParams(weights={"a": 1, "b": 1}, weighting="share", train_size=40),
        seed=1,
        tally=t,
    )
    counts = Counter(mixed["source"].to_pylist())
    assert counts == {"a": 20, "b": 20}
    assert shares["a"] == {
        "available": 10,
        "weight": 1,
        "target": 20,
        "share": 0.5,
        "repeat": 2.0,
        "upsampled": True,
        "capped": 0,
    }
    assert (t.n_in, t.n_out, t.expanded, dict(t.dropped)) == (50, 40, 10, {"downsampled": 20})
    t.check()
    a_ids = [i for i, s in zip(mixed["id"].to_pylist(), mixed["source"].to_pylist(), strict=True) if s == "a"]
    assert Counter(a_ids) == {f"a/{i}": 2 for i in range(10)}
    assert sorted(mixed["copy"].to_pylist()).count(1) == 10


def test_mix_is_deterministic_and_seeded():
    p = MixParams(weights={"a": 2}, train_size=30)
    one = mix_train(table(a=20, b=20), p, 5, Tally())[0]
    assert one.equals(mix_train(table(a=20, b=20), p, 5, Tally())[0])
    assert not one.equals(mix_train(table(a=20, b=20), p, 6, Tally())[0])


def test_eval_splits_keep_natural_composition_minus_excluded():
    t = Tally()
    out = mix_eval(table(a=10, b=5, c=5), MixParams(weights={"c": 0, "a": 5}, val_size=12), 1, "val", t)
    assert set(out["source"].to_pylist()) <= {"a", "b"}  # weights don't reshape eval splits; c is out
    assert out["id"].to_pylist() == sorted(
        out["id"].to_pylist(), key=lambda i: (i[0], int(i[2:]))
    )  # order kept
    assert out.num_rows == 12 and set(out["copy"].to_pylist()) == {0}
    assert dict(t.dropped) == {"excluded_source": 5, "downsampled": 3}
    t.check()
