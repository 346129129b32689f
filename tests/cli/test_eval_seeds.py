"""roilens eval on checkpoints of 2 seeds x 2 poolers: groups by seed (mean +/- std) and the paired
comparison of the poolers, from real (tiny) runs through the commands' own functions."""

from __future__ import annotations

import json
import warnings

import pytest

from conftest import TINY_MODEL, compose_config

pytestmark = pytest.mark.slow

DATA = ["dataset.train.num_images=4", "dataset.val.num_images=3", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


def test_seed_groups_and_pooler_pairs_from_real_checkpoints(tmp_path, capsys):
    from detector.cli import eval as eval_tool
    from detector.cli import train as train_tool

    checkpoints = []
    for pooler in ("roi_pool", "roi_align"):
        for seed in (0, 1):
            out = tmp_path / f"{pooler}_{seed}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train_tool.train(compose_config("train", [
                    f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, f"model/pooler={pooler}", f"seed={seed}",
                    "solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0",
                    "progress=false", "device=cpu", f"output_dir={out}"]))
            checkpoints.append(out / "model_final.pth")
    eval_tool.evaluate(compose_config("eval", [
        "checkpoints=[" + ",".join(str(c) for c in checkpoints) + "]", "progress=false", "num_workers=0",
        "device=cpu", f"output_dir={tmp_path / 'eval'}"]))
    seeds = json.loads((tmp_path / "eval" / "seeds.json").read_text())
    assert [g["label"] for g in seeds["groups"]] == ["RoIPool(s32)", "RoIAlign(s32, sr2, aligned)"]
    assert [g["seeds"] for g in seeds["groups"]] == [[0, 1], [0, 1]]
    rows = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    pool_ap = [rows[0]["AP"], rows[1]["AP"]]
    assert seeds["groups"][0]["AP"]["mean"] == pytest.approx(sum(pool_ap) / 2, abs=1e-12)
    (pair,) = seeds["pairs"]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("RoIPool(s32)", "RoIAlign(s32, sr2, aligned)", [0, 1])
    diffs = [rows[2]["AP50"] - rows[0]["AP50"], rows[3]["AP50"] - rows[1]["AP50"]]
    assert pair["AP50"]["mean_diff"] == pytest.approx(sum(diffs) / 2, abs=1e-12)
    assert "paired by seed [0, 1]" in capsys.readouterr().out
    for png in ("seeds_ap_vs_iou", "seeds_ap_by_size"):  # error bars over the seeds
        assert (tmp_path / "eval" / "plots" / f"{png}.png").stat().st_size > 5000, png

    # RoIPool's quantization of the val boxes next to the AP gap, per size: the same numbers as
    # `roilens analyze` on the same split and model, and the gap from the rows above.
    tables = json.loads((tmp_path / "eval" / "quantization_vs_ap.json").read_text())
    assert len(tables) == 4  # each RoIPool checkpoint against each RoIAlign checkpoint
    from detector.cli import analyze as analyze_tool

    measured = analyze_tool.analyze(compose_config("analyze_quantization", [
        f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, f"output_dir={tmp_path / 'q'}"]))["rules"]["round"]
    first = tables[0]
    assert (first["roipool"], first["other"]) == ("RoIPool(s32)", "RoIAlign(s32, sr2, aligned)")
    for entry in first["sizes"]:
        m = measured[entry["size"]]
        assert entry["count"] == m["count"]
        if m["count"]:
            assert entry["lost"] == pytest.approx(m["lost"]["mean"]) and entry["added"] == pytest.approx(m["added"]["mean"])
    all_row = next(e for e in first["sizes"] if e["size"] == "all")
    assert all_row["gap"] == pytest.approx(rows[2]["AP"] - rows[0]["AP"], abs=1e-12)
