"""The comparison table of ``tools/eval.py``: one row per model (or results file), as text and Markdown.

A row holds the COCO metrics (:data:`~detector.evaluation.METRIC_KEYS`, and AR100 of the AR stats
every row also carries in JSON), VOC07 11-point and VOC
area mAP@0.5, the mean IoU of the true positives, and images/s. Values are fractions; the table shows
them in %. ``NaN``/``None`` (undefined: no ground truth of that kind) shows as ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detector.evaluation.coco_evaluator import METRIC_KEYS

__all__ = ["COLUMNS", "LEGEND", "format_markdown", "format_table", "json_safe"]

COLUMNS = (*METRIC_KEYS, "AR100", "VOC07", "VOC", "TP_IoU")
LEGEND = (
    "AP..APl: COCO (pycocotools), in %; AR100: COCO average recall, 100 detections per image; "
    "VOC07: VOC2007 11-point mAP@0.5; VOC: VOC2010+ area mAP@0.5 "
    "(both under the devkit's rules); TP_IoU: mean IoU of the true positives at IoU 0.5; img/s: "
    "end-to-end inference speed (- for results files)"
)


def json_safe(obj: Any) -> Any:
    """NaN (AP undefined: no ground truth of that kind) -> None, so the files stay strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _pct(v: Any) -> str:
    return "nan" if v is None or v != v else f"{100 * v:.2f}"


def _speed(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text: ``#, model, the COLUMNS, img/s, source`` per row, then the legend."""
    header = f"{'#':>2}  {'model':<30} " + " ".join(f"{k:>6}" for k in COLUMNS) + f" {'img/s':>7}  source"
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows):
        lines.append(
            f"{i:>2}  {r['model']:<30} " + " ".join(f"{_pct(r.get(k)):>6}" for k in COLUMNS)
            + f" {_speed(r.get('images_per_second')):>7}  {r['source']}"
        )
    return "\n".join(lines) + "\n" + LEGEND


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The same table in Markdown (``comparison.md``)."""
    lines = [
        "| # | model | " + " | ".join(COLUMNS) + " | img/s | source |",
        "|---|---|" + "---:|" * len(COLUMNS) + "---:|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i} | {r['model']} | " + " | ".join(_pct(r.get(k)) for k in COLUMNS)
            + f" | {_speed(r.get('images_per_second'))} | `{r['source']}` |"
        )
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"
