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
