"""The ablation harness on a tiny grid: 2 knobs x 2 values x 1 tiny dataset, a few iterations, through
the real tools/train.py multiruns; results appended, resumable, and the table built from them."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, TINY_MODEL, compose_config

from benchmarks import ablate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    spec = {
        "budget": [
            f"dataset.root={tmp}/data/${{dataset.name}}", "dataset.train.num_images=6",
            "dataset.val.num_images=3", "dataset.generator.min_image_size=64",
            "dataset.generator.max_image_size=96", *TINY_MODEL, "solver.max_iter=3",
            "solver.ims_per_batch=2", "solver.warmup_iters=1", "checkpoint_period=0", "num_workers=0",
            "progress=false", "device=cpu",
        ],
        "base": ["model.rpn.post_nms_topk_train=64"],
        "parts": {"tiny": ["family/texture_imbalanced"]},
        "variants": {
            "lr_a": ["solver.base_lr=0.01"], "lr_b": ["solver.base_lr=0.02"],
            "rois_a": ["model.roi_heads.sampler.batch_size_per_image=16"],
            "rois_b": ["model.roi_heads.sampler.batch_size_per_image=32"],
        },
    }  # fmt: skip
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / "out"
    # As in a fresh `python benchmarks/ablate.py`: no resolver registered by the test session.
    for name in ("repo_root", "scaled_lr", "fractions_of"):
        OmegaConf.clear_resolver(name)
    assert ablate.main(["--spec", str(tmp / "spec.yaml"), "--out", str(out), "--part", "tiny", "--jobs", "2"]) == 0
    return tmp, out


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_every_point_ran_through_train_with_its_overrides(grid):
    _, out = grid
    rows = _rows(out)
    assert sorted(r["variant"] for r in rows) == ["lr_a", "lr_b", "rois_a", "rois_b"]
    for r in rows:
        assert r["dataset"] == "family/texture_imbalanced"
        assert all(r[m] is None or 0 <= r[m] <= 1 for m in ("AP", "AP50", "AP75", "APs"))
        assert r["wall_s"] > 0
        cfg = yaml.safe_load(open(f"{r['run_dir']}/config.yaml"))
        assert cfg["model"]["rpn"]["post_nms_topk_train"] == 64  # the base recipe
        assert cfg["solver"]["max_iter"] == 3  # the budget
        expected = {"lr_a": ("solver", "base_lr", 0.01), "lr_b": ("solver", "base_lr", 0.02)}
        if r["variant"] in expected:
            group, key, value = expected[r["variant"]]
            assert cfg[group][key] == pytest.approx(value)
        else:
            rois = {"rois_a": 16, "rois_b": 32}[r["variant"]]
            assert cfg["model"]["roi_heads"]["sampler"]["batch_size_per_image"] == rois


def test_table_has_a_row_per_variant_with_means(grid):
    _, out = grid
    table = (out / "results.md").read_text()
    rows = {r["variant"]: r for r in _rows(out)}
    for variant, r in rows.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        ap = "—" if r["AP"] is None else f"{100 * r['AP']:.1f}"
        assert line.split(" | ")[1] == ap  # mean over one dataset = its AP


def test_rerun_skips_done_points_and_redoes_a_missing_one(grid):
    tmp, out = grid
    rows = _rows(out)
    kept = [r for r in rows if r["variant"] != "rois_b"]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    # As a run stopped during its final evaluation leaves it: the final model and the checkpoint
    # pointer written, no metrics (train.py refuses such a folder unless told to overwrite it).
    run = out / "runs" / "rois_b" / "texture_imbalanced"
    assert (run / "model_final.pth").is_file() and (run / "last_checkpoint").is_file()
    (run / "metrics.json").unlink(), (run / "timing.json").unlink()
    before = (out / "ablation.log").read_text().count(" start ")
    assert ablate.main(["--spec", str(tmp / "spec.yaml"), "--out", str(out), "--part", "tiny"]) == 0
    log = (out / "ablation.log").read_text()
    assert log.count(" start ") == before + 1 and log.rstrip().splitlines()[-1].split()[2:5] == ["rois_b", "seed", "0:"]
    assert sorted(r["variant"] for r in _rows(out)) == ["lr_a", "lr_b", "rois_a", "rois_b"]
    assert (run / "timing.json").is_file()


def test_rows_name_their_machine_and_a_table_takes_one_row_per_seed(grid, tmp_path):
    """Rows of one point from two machines are two experiments: averaging them would count a seed
    twice. Tables and decisions refuse them in one line; --machine picks one machine's rows."""
    tmp, out = grid
    rows = _rows(out)
    assert all(r["machine"] == ablate.machine() and r["machine"] for r in rows)
    other = [{**r, "machine": "2-core Elsewhere CPU", "AP": 0.0} for r in rows]
    with pytest.raises(ValueError, match=r"^\w+ / texture_imbalanced seed 0 is in the results 2 times \(machines: .+\) and \d+ more "):
        ablate.aggregate(rows + other)
    with pytest.raises(ValueError, match="choose one machine's rows"):
        ablate.decide(rows + other, variant="lr_a", base="lr_b", tuning=["family/texture_imbalanced"], heldout=[])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + other))
    argv = ["--spec", str(tmp / "spec.yaml"), "--out", str(mixed), "--table"]
    with pytest.raises(SystemExit, match=r"^error: .*results.jsonl: \w+ / texture_imbalanced seed 0 .*--machine NAME\)$"):
        ablate.main(argv)
    assert ablate.main([*argv, "--machine", "elsewhere"]) == 0
    assert "| lr_a | 0.0 |" in (mixed / "results.md").read_text()
    assert ablate.select_machine(rows + other, "") == rows + other


def test_jobs_are_variant_seed_pairs_so_one_variants_seeds_share_the_cores(tmp_path, monkeypatch):
    """``--jobs 2`` with one variant and two seeds runs both seeds at once (a barrier of two parties
    passes only if they are side by side), each on one thread, variant by variant."""
    import threading

    spec = {"budget": [], "base": [], "parts": {"p": ["family/synth_large"]},
            "variants": {"a": ["solver.base_lr=0.01"], "b": []}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    barrier, calls = threading.Barrier(2, timeout=20), []

    def fake_run_seed(out, spec, variant, overrides, datasets, threads, log, seed):
        calls.append((variant, seed, threads, tuple(overrides)))
        if variant == "a":
            barrier.wait()  # raises BrokenBarrierError when a's seeds run one after the other

    monkeypatch.setattr(ablate, "_run_seed", fake_run_seed)
    monkeypatch.setattr(ablate, "prepare_datasets", lambda datasets, overrides: None)
    argv = ["--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--part", "p", "--jobs", "2"]
    assert ablate.main([*argv, "--variants", "a,b,a", "--seeds", "0,1,0"]) == 0  # each named once
    assert sorted(calls) == [("a", 0, 1, ("solver.base_lr=0.01",)), ("a", 1, 1, ("solver.base_lr=0.01",)),
                             ("b", 0, 1, ()), ("b", 1, 1, ())]  # fmt: skip
    assert [c[0] for c in calls[:2]] == ["a", "a"]


def test_unknown_variant_is_one_line(grid):
    tmp, out = grid
    with pytest.raises(SystemExit, match="'nope' is not in"):
        ablate.main(["--spec", str(tmp / "spec.yaml"), "--out", str(out), "--part", "tiny", "--variants", "nope"])


@pytest.mark.parametrize("name", ["ablation.yaml", "ablation_round3.yaml", "ablation_round4.yaml"])
def test_the_committed_specs_split_the_family_and_name_real_configs(name):
    spec = ablate.load_spec(ROOT / "benchmarks" / name)
    # Rounds before the test size became a factor of the training size keep testing at the training
    # size, so that their commands reproduce their rows.
    assert ("model.transform.test_scale=1.0" in spec["budget"]) == (name != "ablation_round4.yaml")
    tuning, heldout = set(spec["parts"]["tuning"]), set(spec["parts"]["heldout"])
    assert tuning and heldout and not tuning & heldout
    family = {f"family/{p.stem}" for p in (ROOT / "configs" / "dataset" / "family").glob("[!_]*.yaml")}
    assert tuning | heldout <= family
    generators = {(ROOT / "configs" / "dataset" / f"{d}.yaml").read_text().count("scenes.ensure_scenes_split") for d in heldout}
    assert generators == {0, 1}  # the held-out part has members of both generators
    # The held-out part never changes between rounds (a member that learns nothing may leave the
    # tuning part, as photo_small did); every family member belongs to some round.
    rounds = [ablate.load_spec(ROOT / "benchmarks" / n)["parts"] for n in ("ablation.yaml", "ablation_round3.yaml")]
    assert heldout == set(rounds[0]["heldout"])
    assert set().union(*(set(p["tuning"]) | set(p["heldout"]) for p in rounds)) == family


@pytest.mark.parametrize("name", ["ablation.yaml", "ablation_round1.yaml", "ablation_round3.yaml", "ablation_round4.yaml"])
def test_a_committed_spec_keeps_its_base_when_the_defaults_move(name):
    """Each committed spec's rows ran at batch 4; its budget pins it, so that ``base`` (and every variant
    that names no batch) composes to what the rows measured whatever configs/solver/sgd.yaml says."""
    spec = ablate.load_spec(ROOT / "benchmarks" / name)
    cfg = compose_config("train", [*spec["budget"], *(spec["base"] or [])])
    assert cfg.solver.ims_per_batch == 4 != compose_config("train").solver.ims_per_batch
    assert cfg.solver.base_lr == pytest.approx(0.04)  # the reference lr at batch 4, width 0.125
    if name == "ablation_round4.yaml":  # batch 2 at the rows' images: the rule's lr, twice the steps
        b2 = compose_config("train", [*spec["budget"], *spec["variants"]["b2_1800"]]).solver
        assert (b2.ims_per_batch, b2.max_iter, b2.base_lr) == (2, 1800, pytest.approx(0.02))


def test_goals_table_compares_defaults_with_best_old_and_roipool():
    def row(variant, dataset, ap):
        return {"variant": variant, "dataset": dataset, "AP": ap, "AP50": ap, "AP75": ap, "APs": ap,
                "wall_s": 1.0, "overrides": []}  # fmt: skip

    rows = [row("base", "family/a", 0.30), row("lr_x2", "family/a", 0.32), row("old_defaults", "family/a", 0.20),
            row("roi_pool", "family/a", 0.40), row("base", "family/b", 0.5)]  # fmt: skip
    text = ablate.goals_table(rows, "heldout", ["family/a", "family/b"])
    a = next(line for line in text.splitlines() if line.startswith("| a |"))
    # RoIPool is never "the best recipe" (it is the comparison, not a recipe knob).
    assert a == "| a | 30.0 | 32.0 (lr_x2) | 0.94 | 20.0 | 40.0 | -10.0 |"
    b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert b == "| b | 50.0 | 50.0 (base) | 1.00 | … | … | … |"
    assert ablate.goals_table(rows, "x", ["family/c"]) == ""


def test_more_seeds_run_only_the_new_ones_and_the_table_shows_their_spread(grid):
    tmp, out = grid
    assert ablate.main(["--spec", str(tmp / "spec.yaml"), "--out", str(out), "--part", "tiny",
                        "--variants", "lr_a", "--seeds", "0,1"]) == 0  # fmt: skip
    rows = [r for r in _rows(out) if r["variant"] == "lr_a"]
    assert sorted(r.get("seed", 0) for r in rows) == [0, 1]
    seed1 = next(r for r in rows if r.get("seed") == 1)
    assert seed1["run_dir"].endswith("texture_imbalanced_seed1")
    assert yaml.safe_load(open(f"{seed1['run_dir']}/config.yaml"))["seed"] == 1
    agg = ablate.aggregate(rows)[("lr_a", "family/texture_imbalanced")]
    assert agg["n"] == 2 and agg["AP"] == pytest.approx(sum(r["AP"] for r in rows) / 2)
    assert agg["AP_std"] == pytest.approx(statistics.stdev(r["AP"] for r in rows))
    line = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| lr_a |"))
    assert f"{100 * agg['AP']:.1f} ± {100 * agg['AP_std']:.1f}" in line  # mean ± sample std over the two seeds


def _result_rows(points):
    return [{"variant": v, "dataset": d, "seed": s, "AP": ap} for (v, d), aps in points.items() for s, ap in enumerate(aps)]


def test_the_decision_rule_on_a_tiny_grid():
    """Hand-made results, 2 tuning and 1 held-out dataset, 3 seeds each (AP as fractions)."""
    tuning, heldout = ["family/a", "family/b"], ["family/c"]
    base = {("base", "family/a"): [0.30, 0.32, 0.34], ("base", "family/b"): [0.10, 0.10, 0.10],
            ("base", "family/c"): [0.50, 0.52, 0.54]}
    # Gains 0.10 and 0.05 (mean 0.075) against pooled stds 0.02 and 0.01 (mean 0.015): adopted.
    good = {("v", "family/a"): [0.40, 0.42, 0.44], ("v", "family/b"): [0.14, 0.15, 0.16],
            ("v", "family/c"): [0.51, 0.52, 0.53]}
    r = ablate.decide(_result_rows({**base, **good}), variant="v", tuning=tuning, heldout=heldout)
    assert r["adopt"], r["reason"]
    assert r["per_dataset"]["family/a"]["gain"] == pytest.approx(0.10)
    assert r["per_dataset"]["family/b"]["pooled_std"] == pytest.approx(0.01 / 2 ** 0.5)
    # The same tuning gain, but the held-out dataset loses 0.05 against a spread of 0.02: refused.
    bad = {**good, ("v", "family/c"): [0.45, 0.47, 0.49]}
    r = ablate.decide(_result_rows({**base, **bad}), variant="v", tuning=tuning, heldout=heldout)
    assert not r["adopt"] and "held-out" in r["reason"] and "c" in r["reason"]
    # A gain within the noise: refused.
    noisy = {**good, ("v", "family/a"): [0.26, 0.33, 0.40], ("v", "family/b"): [0.05, 0.10, 0.15]}
    r = ablate.decide(_result_rows({**base, **noisy}), variant="v", tuning=tuning, heldout=heldout)
    assert not r["adopt"] and "does not exceed" in r["reason"]
    # A speed knob needs no gain, only no loss beyond the spread on any dataset of either part.
    same = {("v", "family/a"): [0.29, 0.32, 0.35], ("v", "family/b"): [0.09, 0.10, 0.11],
            ("v", "family/c"): [0.50, 0.52, 0.54]}
    assert not ablate.decide(_result_rows({**base, **same}), variant="v", tuning=tuning, heldout=heldout)["adopt"]
    r = ablate.decide(_result_rows({**base, **same}), variant="v", tuning=tuning, heldout=heldout, purpose="speed")
    assert r["adopt"], r["reason"]
    # ... and a loss beyond the spread on a tuning dataset refuses it (0.05 against a pooled std of 0).
    slower = {**same, ("v", "family/b"): [0.05, 0.05, 0.05]}
    r = ablate.decide(_result_rows({**base, **slower}), variant="v", tuning=tuning, heldout=heldout, purpose="speed")
    assert not r["adopt"] and "b" in r["reason"]
    # One seed cannot decide.
    r = ablate.decide(_result_rows({("base", "family/a"): [0.3], ("v", "family/a"): [0.5]}), variant="v",
                      tuning=["family/a"], heldout=[])
    assert not r["adopt"] and "at least 2 seeds" in r["reason"]


def test_seeded_cells_show_mean_and_std_and_the_gap_is_paired_by_seed():
    def row(variant, dataset, seed, ap):
        return {"variant": variant, "dataset": dataset, "seed": seed, "AP": ap, "AP50": ap, "AP75": ap, "APs": ap,
                "wall_s": 1.0, "overrides": []}  # fmt: skip

    # base 0.30 / 0.34 / 0.32 (mean 0.32, std 0.02); RoIPool 0.20 / 0.26 / 0.21: per-seed gaps 10, 8, 11
    # points (mean 9.67, std 1.53) -- the unpaired means would give the same 9.7, but their spread
    # (2.0 and 3.2) would not: the pairing is what the std column says.
    rows = [row("base", "family/a", s, ap) for s, ap in enumerate([0.30, 0.34, 0.32])]
    rows += [row("roi_pool", "family/a", s, ap) for s, ap in enumerate([0.20, 0.26, 0.21])]
    text = ablate.goals_table(rows, "heldout", ["family/a"])
    a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert a == "| a | 32.0 ± 2.0 | 32.0 (base) | 1.00 | … | 22.3 ± 3.2 | +9.7 ± 1.5 |"
    # Seeds that do not pair (RoIPool only on seed 0): the plain difference of the means.
    text = ablate.goals_table(rows[:4], "heldout", ["family/a"])
    assert next(line for line in text.splitlines() if line.startswith("| a |")).endswith("| 20.0 | +12.0 |")


def test_the_decision_table_says_each_verdict_once_the_seeds_allow():
    spec = {"parts": {"tuning": ["family/a"], "heldout": ["family/c"]},
            "variants": {"base": [], "v": ["x=1"], "w": ["x=2"]}}  # fmt: skip
    points = {("base", "family/a"): [0.30, 0.32, 0.34], ("base", "family/c"): [0.50, 0.52, 0.54],
              ("v", "family/a"): [0.40, 0.42, 0.44], ("v", "family/c"): [0.51, 0.52, 0.53],
              ("w", "family/a"): [0.40]}  # fmt: skip
    text = ablate.decision_table(_result_rows(points), spec)
    v = next(line for line in text.splitlines() if line.startswith("| v |"))
    assert v.startswith("| v | adopt | tuning: mean gain +10.0 > pooled std 2.0;")
    assert v.endswith("| a +10.0 (±2.0), c +0.0 (±1.6) |")
    assert "| w |" not in text  # one seed of w: no verdict yet
    assert ablate.decision_table(_result_rows(points), {**spec, "parts": {"tiny": ["family/a"]}}) == ""


def test_the_harness_registers_the_config_resolvers_itself():
    # `python benchmarks/ablate.py` composes the configs in its own process before any tool runs: the
    # resolvers behind dataset.root's ${repo_root:} must be its own doing, not a test session's.
    for name in ("repo_root", "scaled_lr", "fractions_of"):
        OmegaConf.clear_resolver(name)
    ablate.prepare_datasets([], [])
    assert all(OmegaConf.has_resolver(n) for n in ("repo_root", "scaled_lr", "fractions_of"))


def test_the_round3_spec_sets_the_lr_its_variant_names_say():
    """Every variant of the width x batch x rule grid composes, and its resolved lr is the one its name
    promises: ``_rule`` = 0.04 * (batch / 4) * (0.125 / width) (uncapped), ``_flat`` = 0.04, ``_sqrt`` =
    0.04 * (batch / 4) * (0.125 / width) ** 0.5, ``_capped`` the config's rule with both terms capped at 1."""
    spec = ablate.load_spec(ROOT / "benchmarks" / "ablation_round3.yaml")
    assert spec["parts"]["heldout"] == ablate.load_spec(ROOT / "benchmarks" / "ablation.yaml")["parts"]["heldout"]
    grid = [v for v in spec["variants"] if v.startswith("w")]
    assert len([v for v in grid if v.endswith(("_rule", "_flat"))]) == 4 * 3 * 2 - 2  # less the two defaults (= base)
    for name in grid:
        width, batch, rule = name.split("_")
        cfg = compose_config("train", [*spec["budget"], *spec["variants"][name]])
        assert cfg.model.backbone.width == float(width[1:]) and cfg.solver.ims_per_batch == int(batch[1:])
        exponent = {"rule": 1.0, "split": 1.0, "floor": 1.0, "sqrt": 0.5, "flat": 0.0, "single": 1.0, "capped": 1.0}[rule]
        factor = (0.125 / float(width[1:])) ** exponent
        if rule == "floor":  # 1 / width down to half the reference's lr
            factor = max(factor, 0.5)
        expected = 0.04 * (int(batch[1:]) / 4) * factor if rule != "flat" else 0.04
        if rule == "single":  # one term, the larger: no product
            expected = 0.04 * max(int(batch[1:]) / 4, factor)
        if rule == "capped":  # the config's own rule: each term capped at 1
            expected = 0.04 * min(int(batch[1:]) / 4, 1) * min(factor, 1)
        assert cfg.solver.base_lr == pytest.approx(expected), name
        # split: the heads at 1 / width, the backbone at the reference's 0.04
        backbone_lr = 0.04 * (int(batch[1:]) / 4) if rule == "split" else expected
        assert cfg.solver.base_lr * cfg.solver.backbone_lr_factor == pytest.approx(backbone_lr), name
        assert cfg.solver.max_iter == 900


def test_jobs_import_the_tree_of_the_harness_first(monkeypatch):
    import os

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = ablate.job_env(1)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ablate.REPO_ROOT), "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = ablate.job_env(None)
    assert env["PYTHONPATH"] == str(ablate.REPO_ROOT)
    assert "OMP_NUM_THREADS" not in env  # the jobs' own default
