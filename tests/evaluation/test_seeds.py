"""Seed groups and paired comparisons on hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from detector.evaluation.seeds import experiment_key, paired_comparison, pooler_pairs, seed_groups


def _run(pooler, seed, ap, width=0.125):
    config = {"seed": seed, "output_dir": f"out/{pooler}/{seed}", "model": {"pooler": {"_target_": pooler},
                                                                             "backbone": {"width": width}}}
    return {"config": config, "seed": seed, "label": pooler, "AP": ap}


def test_runs_that_differ_only_in_seed_and_folder_form_a_group():
    runs = [_run("RoIPool", 0, 0.20), _run("RoIPool", 1, 0.24), _run("RoIPool", 2, 0.22),
            _run("RoIAlign", 0, 0.50), _run("RoIAlign", 1, 0.56),
            _run("RoIAlign", 0, 0.40, width=0.25)]  # another width: its own (single) run, no group
    groups = seed_groups(runs, metrics=["AP"])
    assert [g["members"] for g in groups] == [[0, 1, 2], [3, 4]]
    # mean 0.22; deviations -0.02, 0.02, 0 -> sample variance (4e-4 + 4e-4) / 2 -> std 0.02
    assert groups[0]["AP"]["mean"] == pytest.approx(0.22) and groups[0]["AP"]["std"] == pytest.approx(0.02)
    assert groups[1]["AP"] == {"mean": pytest.approx(0.53), "std": pytest.approx(math.sqrt(0.0018)), "n": 2}
    assert experiment_key(runs[0]["config"]) == experiment_key(runs[1]["config"])
    assert experiment_key(runs[0]["config"]) != experiment_key(runs[3]["config"])
    assert experiment_key(runs[0]["config"], ignore=["model.pooler"]) == experiment_key(runs[3]["config"], ignore=["model.pooler"])


def test_paired_difference_t_and_bootstrap_interval():
    # differences 0.30, 0.32, 0.34: mean 0.32, std 0.02, t = 0.32 / (0.02 / sqrt 3) = 27.71
    r = paired_comparison([0.20, 0.22, 0.24], [0.50, 0.54, 0.58])
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(0.32) and r["std_diff"] == pytest.approx(0.02)
    assert r["t"] == pytest.approx(0.32 / (0.02 / math.sqrt(3)))
    # A bootstrap mean of three of {0.30, 0.32, 0.34} lies in [0.30, 0.34], and a 95 % interval
    # strictly inside it (the extremes need all three draws equal: 2 / 27 of the resamples).
    assert 0.30 <= r["ci95_low"] < 0.32 < r["ci95_high"] <= 0.34
    assert paired_comparison([0.20, 0.22, 0.24], [0.50, 0.54, 0.58]) == r  # fixed generator: reproducible
    with pytest.raises(ValueError):
        paired_comparison([0.1], [0.2, 0.3])


def test_pooler_pairs_pair_by_seed():
    runs = [_run("RoIPool", 0, 0.20), _run("RoIPool", 1, 0.24), _run("RoIAlign", 1, 0.56), _run("RoIAlign", 0, 0.50),
            _run("RoIAlign", 2, 0.70)]
    pairs = pooler_pairs(runs, seed_groups(runs, metrics=["AP"]), metrics=["AP"])
    assert len(pairs) == 1 and pairs[0]["seeds"] == [0, 1]  # seed 2 has no RoIPool run
    assert (pairs[0]["a"], pairs[0]["b"]) == ("RoIPool", "RoIAlign")
    assert pairs[0]["AP"]["mean_diff"] == pytest.approx(((0.50 - 0.20) + (0.56 - 0.24)) / 2)


def test_error_bars_are_the_mean_and_sample_std_per_point():
    from detector.evaluation.plots import _mean_std

    mean, std = _mean_std([[0.2, None, 0.6], [0.4, 0.5, 0.6]])
    assert mean.tolist()[0] == pytest.approx(0.3) and mean.tolist()[1] == pytest.approx(0.5)
    assert std.tolist()[0] == pytest.approx(math.sqrt(0.02)) and std.tolist()[2] == pytest.approx(0.0)
    assert math.isnan(std.tolist()[1])  # one value: no spread to show


def test_experiment_key_ignores_key_order_and_missing_or_odd_ignore_paths():
    from pathlib import Path

    a = {"model": {"backbone": {"width": 0.25, "depth": 16}, "pooler": "align"}, "data": Path("d/train.json")}
    b = {"data": Path("d/train.json"), "model": {"pooler": "align", "backbone": {"depth": 16, "width": 0.25}}}
    assert experiment_key(a) == experiment_key(b) and '"data": "d/train.json"' in experiment_key(a)
    # a path whose parent is not a mapping, or whose leaf is absent, removes nothing
    for ignore in (["model.pooler.kind"], ["model.roi_heads.sampler"], ["model.backbone.missing"], ["nothing.at.all"]):
        assert experiment_key(a, ignore=ignore) == experiment_key(a)
    assert experiment_key(a, ignore=["model.backbone.depth"]) == experiment_key(
        {"data": Path("d/train.json"), "model": {"pooler": "align", "backbone": {"width": 0.25}}})


def test_mean_std_skips_missing_and_non_finite_values():
    from detector.evaluation.seeds import mean_std

    assert mean_std([0.2, None, math.nan, 0.4, math.inf]) == (pytest.approx(0.3), pytest.approx(math.sqrt(0.02)))
    mean, std = mean_std([0.5, None])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([None, math.nan]))


def test_groups_keep_their_first_members_label_seeds_and_count_only_finite_values():
    runs = [_run("RoIAlign", 0, 0.5, width=0.5),  # alone: no group, and it comes first
            _run("RoIPool", 3, 0.20), _run("RoIPool", 1, None), _run("RoIPool", 2, 0.24)]
    runs[2]["label"] = "RoIPool, seed 1"
    (group,) = seed_groups(runs, metrics=["AP"])
    assert group["label"] == "RoIPool" and group["members"] == [1, 2, 3] and group["seeds"] == [3, 1, 2]
    assert group["AP"] == {"mean": pytest.approx(0.22), "std": pytest.approx(math.sqrt(0.0008)), "n": 2}


def test_paired_comparison_edge_cases_and_message():
    one = paired_comparison([0.2], [0.5])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.3)
    assert math.isnan(one["std_diff"]) and math.isnan(one["t"])
    assert one["ci95_low"] == one["ci95_high"] == pytest.approx(0.3)
    two = paired_comparison([0.2, 0.3], [0.5, 0.4])  # differences 0.3 and 0.1
    assert two["std_diff"] == pytest.approx(math.sqrt(0.02)) and two["t"] == pytest.approx(0.2 / (math.sqrt(0.02) / math.sqrt(2)))
    flat = paired_comparison([0.0, 0.0, 0.0], [0.25, 0.25, 0.25])  # every pair gains 0.25: no spread, no t
    assert flat["std_diff"] == 0.0 and math.isnan(flat["t"]) and flat["ci95_low"] == flat["ci95_high"] == 0.25
    for a, b in (([0.1], [0.2, 0.3]), ([], [])):
        with pytest.raises(ValueError) as error:
            paired_comparison(a, b)
        assert str(error.value) == f"paired values need the same, non-zero length; got {len(a)} and {len(b)}"


def test_bootstrap_interval_is_the_25_and_975_percentiles_of_resampled_means():
    # Ten differences near 0..9 (off the 0.1 lattice, so that resampled means rarely tie): the mean of a
    # resample of 10 is close to normal with sd = (the sample's population sd) / sqrt(10), about 0.9, so
    # the interval is about mean -/+ 1.96 sd; the extremes of 10 000 resamples lie near mean -/+ 3.9 sd.
    diffs = [i + math.sqrt(i) / 7 for i in range(10)]
    m = sum(diffs) / 10
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 10) / math.sqrt(10)
    r = paired_comparison([0.0] * 10, diffs)
    assert r["ci95_low"] == pytest.approx(m - 1.96 * sd, abs=0.25)
    assert r["ci95_high"] == pytest.approx(m + 1.96 * sd, abs=0.25)
    # the defaults are 10 000 resamples from a generator seeded with 0; another seed moves the interval
    assert paired_comparison([0.0] * 10, diffs, resamples=10_000, seed=0) == r
    assert paired_comparison([0.0] * 10, diffs, seed=1) != r
    assert paired_comparison([0.0] * 10, diffs, resamples=10_001) != r


def test_pooler_pairs_skip_groups_that_differ_elsewhere_and_metrics_with_missing_values():
    runs = [_run("RoIPool", 0, 0.20, width=0.5), _run("RoIPool", 1, 0.22, width=0.5),  # another width first
            _run("RoIPool", 0, 0.20), _run("RoIPool", 1, 0.24),
            _run("RoIAlign", 5, 0.9), _run("RoIAlign", 6, 0.9),  # another RPN: not a pooler pair
            _run("RoIMax", 5, 0.9), _run("RoIMax", 6, 0.9),  # a pooler pair without a common seed
            _run("RoIAlign", 0, 0.50), _run("RoIAlign", 1, 0.56)]
    for run in runs[4:6]:
        run["config"]["model"]["rpn"] = "other"
    runs += [_run("RoIWarp", 0, 0.3), _run("RoIWarp", 1, 0.3)]
    for run in runs:
        run["AP50"] = None if run["label"] == "RoIWarp" else 0.5
    groups = seed_groups(runs, metrics=["AP"])
    pairs = pooler_pairs(runs, groups, metrics=["AP", "AP50"])
    assert [(p["a"], p["b"]) for p in pairs] == [("RoIPool", "RoIAlign"), ("RoIPool", "RoIWarp"), ("RoIAlign", "RoIWarp")]
    assert pairs[0]["AP"]["mean_diff"] == pytest.approx(0.31) and "AP50" in pairs[0]
    assert "AP50" not in pairs[1] and "AP" in pairs[1]  # a missing value leaves that metric out
