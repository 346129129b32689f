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
    # One table for the two seed groups (not one per pair of checkpoints), APs over the seeds.
    assert len(tables) == 1 and tables[0]["seeds"] == [0, 1]
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
    assert all_row["AP_roipool"] == pytest.approx((rows[0]["AP"] + rows[1]["AP"]) / 2, abs=1e-12)
    assert all_row["AP_other"] == pytest.approx((rows[2]["AP"] + rows[3]["AP"]) / 2, abs=1e-12)
    gaps = [rows[2]["AP"] - rows[0]["AP"], rows[3]["AP"] - rows[1]["AP"]]
    assert all_row["gap"] == pytest.approx(sum(gaps) / 2, abs=1e-12)
    assert all_row["gap_std"] == pytest.approx(abs(gaps[0] - gaps[1]) / 2 ** 0.5, abs=1e-12)
    assert min(gaps) - 1e-12 <= all_row["gap_ci95"][0] <= all_row["gap_ci95"][1] <= max(gaps) + 1e-12
    assert "seeds [0, 1] (mean ± std" in (tmp_path / "eval" / "quantization_vs_ap.md").read_text()

    # Without seed groups (one run per pooler), the table is per pair of checkpoints.
    eval_tool.evaluate(compose_config("eval", [
        f"checkpoints=[{checkpoints[0]},{checkpoints[2]}]", "progress=false", "num_workers=0",
        "device=cpu", f"output_dir={tmp_path / 'eval1'}"]))
    (single,) = json.loads((tmp_path / "eval1" / "quantization_vs_ap.json").read_text())
    assert "seeds" not in single
    all_row = next(e for e in single["sizes"] if e["size"] == "all")
    assert all_row["gap"] == pytest.approx(rows[2]["AP"] - rows[0]["AP"], abs=1e-12)


def test_quantization_table_over_seeds_from_hand_made_rows(tmp_path):
    """Non-zero APs (the tiny runs above score 0): 2 RoIPool and 2 RoIAlign runs of seeds 0 and 1, plus a
    third seed of RoIAlign alone and an unrelated run; hand-computed means, std and paired gap."""
    from detector.cli.eval import report_quantization_vs_ap

    def config(pooler, **extra):
        return {"model": {"pooler": {"_target_": pooler}, "backbone": {"stride": 32}}, "dataset": "d", **extra}

    rows, runs = [], []
    for pooler, seed, ap, aps in (("RoIPool", 0, 0.30, 0.10), ("RoIPool", 1, 0.34, 0.12),
                                  ("RoIAlign", 0, 0.60, 0.40), ("RoIAlign", 1, 0.58, 0.46),
                                  ("RoIAlign", 2, 0.70, 0.50)):
        rows.append({"model": pooler, "checkpoint": f"{pooler}{seed}.pth", "dataset": "val.json", "AP": ap,
                     "APs": aps, "APm": 0.5, "APl": float("nan")})
        runs.append({"config": config(pooler), "seed": seed, "label": pooler, "row": len(rows) - 1, **rows[-1]})
    rows.append({"model": "other", "checkpoint": "x.pth", "dataset": "val.json", "AP": 0.9, "APs": 0.9})
    runs.append({"config": config("RoIAlign", solver={"max_iter": 9}), "seed": 0, "label": "other", "row": 5, **rows[-1]})
    quant = {size: {"count": 3, "shift_px": 1.0, "lost": 0.2, "added": 0.3} for size in ("small", "all")}
    # A split without large boxes: analyze_quantization's means over no box are NaN, COCO's APl is -1 -> NaN.
    quant["large"] = {"count": 0, "shift_px": float("nan"), "lost": float("nan"), "added": float("nan")}
    quantized = {0: ("val.json", quant), 1: ("val.json", quant)}
    report_quantization_vs_ap(rows, quantized, tmp_path, runs=runs)
    tables = json.loads((tmp_path / "quantization_vs_ap.json").read_text())
    seeded = [t for t in tables if "seeds" in t]
    (t,) = seeded
    assert t["seeds"] == [0, 1] and (t["roipool"], t["other"]) == ("RoIPool", "RoIAlign")
    small = next(e for e in t["sizes"] if e["size"] == "small")
    assert small["AP_roipool"] == pytest.approx(0.11) and small["AP_other"] == pytest.approx(0.43)
    assert small["AP_roipool_std"] == pytest.approx(0.02 / 2 ** 0.5) and small["AP_other_std"] == pytest.approx(0.06 / 2 ** 0.5)
    assert small["gap"] == pytest.approx(0.32) and small["gap_std"] == pytest.approx(0.04 / 2 ** 0.5)
    assert small["gap_ci95"] == pytest.approx([0.30, 0.34])  # two pairs: the bootstrap means lie in [0.30, 0.34]
    all_row = next(e for e in t["sizes"] if e["size"] == "all")
    assert all_row["gap"] == pytest.approx(((0.60 - 0.30) + (0.58 - 0.34)) / 2)
    # Seed 2 of RoIAlign (no RoIPool partner) belongs to the group, whose table covers it; the run of
    # another config is in no group and keeps one table per RoIPool checkpoint.
    singles = sorted((t["roipool"], t["other"]) for t in tables if "seeds" not in t)
    assert singles == [("RoIPool", "other"), ("RoIPool", "other")]
    table = (tmp_path / "quantization_vs_ap.md").read_text()
    assert "| small | 3 | 1.0 | 20% | 30% | 11.0 ± 1.4 | 43.0 ± 4.2 | +32.0 [+30.0, +34.0] |" in table
    assert "| large | 0 | — | — | — | — | — | — |" in table and "nan" not in table
