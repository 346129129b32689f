"""The whole detector exported in every pooler mode: onnxruntime and torch.export against eager.

    python -m benchmarks.export_parity [--out benchmarks/results/export_parity]

The suite checks the model end to end in a few modes (tests/export) and every mode of the operators
alone in onnxruntime (tests/export/test_onnx_operators.py); exporting the whole model 22 times takes
about 20 minutes here (one thread), so the full matrix is this script. For each mode (RoIAlign: sampling 2 or
adaptive x aligned x avg/max x centered/interior; RoIPool: round, floor; RoIWarp: sampling 2 or
adaptive x avg/max) it builds
the small test model (width 0.0625, random weights with the last layers of the RPN and the box head
scaled by ``SHARPEN`` so that scores spread out, score threshold 0.2 so that every image has dozens
of detections, all kept), exports it with any image size in both formats, and runs two groups of
images: four already at the model's input size (the resize is the identity, so any difference is the
program's), and four that the program resizes (onnxruntime's bilinear resize differs from torch's by
about 1e-5 of a pixel value). Each eager detection is matched to one exported detection of the same
label (score within 1e-3, nearest box); the table gives the largest box and score differences and the
detections left unmatched on either side. Not timed; it may run beside other
work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from detector.cli.api import compose_command
from detector.cli.config import build_model
from detector.export import export_detector
from detector.exported import ExportedPredictor

SAME_SIZE = [(128, 160), (128, 192), (176, 128), (128, 128)]  # min_size 128, max_size 192: no resize
SHARPEN = 30.0
RESIZED = [(120, 160), (97, 203), (256, 130), (300, 301)]
TINY = ["model.backbone.width=0.0625", "model.roi_heads.box_head.representation_size=32",
        "model.transform.min_size=128", "model.transform.max_size=192", "model.roi_heads.score_thresh=0.2",
        "model.roi_heads.detections_per_img=1000"]  # no cut at 100: near-tied 100th and 101st could swap


def modes() -> list[tuple[str, list[str]]]:
    out = []
    for s, a, r, lay in itertools.product((2, -1), (True, False), ("avg", "max"), ("centered", "interior")):
        out.append((f"roi_align s={s} aligned={a} {r} {lay}",
                    ["model/pooler=roi_align", f"model.pooler.sampling_ratio={s}", f"model.pooler.aligned={a}",
                     f"model.pooler.reduction={r}", f"model.pooler.sample_layout={lay}"]))
    for q in ("round", "floor"):
        out.append((f"roi_pool {q}", ["model/pooler=roi_pool", f"model.pooler.quantization={q}"]))
    for s, r in itertools.product((2, -1), ("avg", "max")):
        out.append((f"roi_warp s={s} {r}", ["model/pooler=roi_warp", f"model.pooler.sampling_ratio={s}",
                                             f"model.pooler.reduction={r}"]))
    return out


def compare(got: dict, expected: dict, score_tol: float) -> tuple[float, float, int]:
    """Greedy one-to-one matching (same label, score within ``score_tol``, nearest box) ->
    (largest box difference in px, largest score difference, eager detections left unmatched)."""
    free = torch.ones(len(got["scores"]), dtype=torch.bool)
    box_err = score_err = 0.0
    missing = abs(len(got["scores"]) - len(expected["scores"]))
    for box, score, label in zip(expected["boxes"], expected["scores"], expected["labels"]):
        candidates = free & (got["labels"] == label) & ((got["scores"] - score).abs() <= score_tol)
        if not candidates.any():
            missing += 1
            continue
        distance = (got["boxes"] - box).abs().amax(1).masked_fill(~candidates, float("inf"))
        j = int(distance.argmin())
        free[j] = False
        box_err = max(box_err, float(distance[j]))
        score_err = max(score_err, float((got["scores"][j] - score).abs()))
    return box_err, score_err, missing


def spread(model: torch.nn.Module) -> None:
    """Sharper last layers: at initialisation (std 0.01) every class scores about 1 / (K + 1) and
    anchors of one cell score alike, so near-ties decide which detections survive NMS and the top-k, and
    two correct implementations may break them differently. Scaled, the scores spread out."""
    with torch.no_grad():
        for layer in (model.rpn.head.objectness_logits, model.rpn.head.anchor_deltas,
                      model.roi_heads.predictor.cls_score, model.roi_heads.predictor.bbox_pred):
            layer.weight.mul_(SHARPEN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/export_parity")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    groups = {"same size": [torch.rand(3, h, w, generator=g) for h, w in SAME_SIZE],
              "resized": [torch.rand(3, h, w, generator=g) for h, w in RESIZED]}
    rows, results = [], []
    for name, overrides in modes():
        torch.manual_seed(0)
        cfg = compose_command("train", TINY + overrides)
        model = build_model(cfg.model, class_names=["a", "b", "c"]).eval()
        spread(model)
        with torch.no_grad():
            expected = {k: [model([image])[0] for image in images] for k, images in groups.items()}
        row = {"mode": name, "detections": {k: sum(len(e["scores"]) for e in v) for k, v in expected.items()}}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt, suffix in (("torch_export", ".pt2"), ("onnx", ".onnx")):
                predictor = ExportedPredictor(export_detector(model, Path(tmp) / f"model{suffix}", format=fmt,
                                                              class_names=["a", "b", "c"], example_size=(120, 160)))
                for group, images in groups.items():
                    errors = [compare(predictor.run(image), e, score_tol=1e-3) for image, e in zip(images, expected[group])]
                    row[f"{fmt} {group}"] = {"box_px": max(e[0] for e in errors), "score": max(e[1] for e in errors),
                                             "unmatched": sum(e[2] for e in errors)}
        results.append(row)
        cells = [f"{row['detections']['same size']} / {row['detections']['resized']}"]
        for fmt in ("torch_export", "onnx"):
            same, resized = row[f"{fmt} same size"], row[f"{fmt} resized"]
            cells += [f"{same['box_px']:.1e}", f"{same['score']:.1e}", str(same["unmatched"]), str(resized["unmatched"])]
        line = f"| {name} | " + " | ".join(cells) + " |"
        rows.append(line)
        print(line, flush=True)
    header = ("| mode | eager detections (same size / resized) | torch.export: box px | score | unmatched | "
              "unmatched, resized | onnxruntime: box px | score | unmatched | unmatched, resized |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    table = header + "\n" + "\n".join(rows)
    sizes = {k: ", ".join(f"{h}x{w}" for h, w in v) for k, v in (("same size", SAME_SIZE), ("resized", RESIZED))}
    note = f"images at the input size: {sizes['same size']}; resized: {sizes['resized']}; torch {torch.__version__}"
    (out / "export_parity.md").write_text(f"{note}\n\n{table}\n")
    (out / "export_parity.json").write_text(json.dumps(results, indent=2))
    print(table)


if __name__ == "__main__":
    main()
