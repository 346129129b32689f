"""COCO-style box AP: detections -> COCO results -> pycocotools ``COCOeval`` -> six numbers.

We never re-implement COCO AP: the matching rules (crowd boxes, area ranges, 101-point
interpolation, 100 detections per image and category) are subtle, and papers report the numbers
pycocotools gives.
This module only converts our tensors into the COCO results format, runs ``COCOeval`` quietly, and
names its first six statistics.

Values are fractions in [0, 1] (0.372, not 37.2). pycocotools reports -1 for an area range (or the
whole set) that holds no ground-truth box, because AP is undefined there; we report ``float("nan")``
for it rather than 0 (which would read as "the detector found none of them") or -1 (which would
corrupt any mean taken over runs). ``metrics.json`` stores such a value as ``null`` so that the file
stays strict JSON.

Shape shorthand:
    N: number of images
    D: number of detections in one image
    K: number of foreground classes (contiguous labels 1..K; 0 is background)
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.dataset import is_ignored
from detector.errors import DatasetError
from detector.utils.io import atomic_write_json

__all__ = [
    "AR_KEYS",
    "COCO_KEYS",
    "METRIC_KEYS",
    "COCOEvaluator",
    "evaluate_coco",
    "make_cocoeval",
    "predictions_to_coco_results",
    "run_cocoeval",
]

# The first six entries of ``COCOeval.stats``, in that order: AP averaged over IoU 0.50:0.95, AP at
# IoU 0.50 (the VOC metric), AP at IoU 0.75, then AP@[.50:.95] for small (< 32^2 px), medium and
# large (> 96^2 px) ground-truth areas.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# pycocotools' recall statistics (stats[6:12]): at most 1, 10, 100 detections per image, then by size.
AR_KEYS = ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Everything COCOeval.summarize() computes, in its order.
COCO_KEYS = (*METRIC_KEYS, *AR_KEYS)


def _as_list(x: Any) -> list:
    """Tensor / ndarray / sequence -> nested python list (one device copy, not one per element)."""
    return x.tolist() if hasattr(x, "tolist") else list(x)


def predictions_to_coco_results(
    predictions: Mapping[int, Mapping[str, Any]], label_to_cat_id: Mapping[int, int]
) -> list[dict]:
    """Convert per-image model outputs into the COCO detection results format.

    Args:
        predictions: COCO image id -> ``dict(boxes=[D, 4] xyxy in original image pixels,
            labels=[D] int in 1..K, scores=[D])``, as tensors (any device), arrays or lists.
        label_to_cat_id: contiguous label 1..K -> COCO category id (category ids in COCO files
            are often not contiguous, e.g. 1..90 with gaps).

    Returns:
        One dict per detection, ordered by image id then by the model's own order:
        ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h] floats, "score": float}``.

    Raises:
        DatasetError: a predicted label has no COCO category, i.e. the model was built for a
            different number of classes than the dataset it is evaluated on.
    """
    results: list[dict] = []
    for image_id in sorted(predictions):
        pred = predictions[image_id]
        boxes = _as_list(pred["boxes"])
        labels = _as_list(pred["labels"])
        scores = _as_list(pred["scores"])
        assert len(boxes) == len(labels) == len(scores), "boxes/labels/scores length mismatch"
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
            label = int(label)
            if label not in label_to_cat_id:
                raise DatasetError(
                    f"model predicted label {label} but the dataset maps only labels "
                    f"{sorted(label_to_cat_id)} to COCO categories; does the model's num_classes "
                    "match the dataset?"
                )
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_cat_id[label]),
                    # COCO boxes are [x, y, width, height]; ours are [x1, y1, x2, y2].
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return results


def _check_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> None:
    """Fail with one line instead of pycocotools' bare ``AssertionError`` on foreign image ids."""
    known = set(coco_gt.getImgIds())
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        shown = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise DatasetError(
            f"detections refer to {len(unknown)} image id(s) not in the ground truth ({shown}); "
            "were they made on a different annotation file?"
        )


class _COCOevalWithIgnore(COCOeval):
    """``COCOeval`` that also ignores ground truth flagged ``ignore`` or ``difficult``.

    pycocotools sets ``ignore = iscrowd`` for every box, erasing a dataset's own flags; this puts
    them back after its ``_prepare``. An ignored box is neither a miss nor, when a detection matches
    it, a false positive, as VOC's difficult objects. Unlike a crowd region it keeps the ordinary IoU
    and matches one detection only: a second detection on it counts as a false positive (the VOC
    devkit ignores every detection on a difficult box; its own columns do).
    """

    def __init__(self, *args: Any, ignored_ids: set[int], not_scored: dict[int, bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ignored_ids = ignored_ids
        # annotation id -> crowd / ignore / difficult, as loaded (what the VOC columns treat as difficult)
        self.not_scored = not_scored

    def _prepare(self) -> None:
        super()._prepare()
        for gts in self._gts.values():
            for gt in gts:
                if gt["id"] in self._ignored_ids:
                    gt["ignore"] = 1


def make_cocoeval(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], *, img_ids: Iterable[int] | None = None
) -> COCOeval:
    """A bbox ``COCOeval`` that has run ``evaluate()`` and ``accumulate()`` quietly.

    Its ``eval["precision"]`` ([T, R, K, A, M]), ``evalImgs`` and ``cocoDt`` feed the detailed
    analysis of :mod:`detector.evaluation.analysis`.
    """
    _check_results(coco_gt, results)
    # COCOeval rewrites every ground-truth annotation in place (``ignore = iscrowd``), which would
    # erase a dataset's own ``ignore`` flags: evaluate a copy, and keep the flags VOC needs.
    not_scored = {a["id"]: is_ignored(a) for a in coco_gt.dataset.get("annotations", [])}
    log = io.StringIO()
    # pycocotools prints progress ("Loading and preparing results...", "DONE (t=0.01s)") and the
    # summary straight to stdout; capture it all so that a training log stays readable.
    with contextlib.redirect_stdout(log):
        original, coco_gt = coco_gt, COCO()
        coco_gt.dataset = copy.deepcopy(original.dataset)
        coco_gt.createIndex()
        if results:
            # loadRes writes area/id/iscrowd/segmentation into each dict: give it copies so the
            # caller's results (and the coco_results.json written from them) stay clean.
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:
            # loadRes indexes anns[0] and so raises on an empty list, but COCOeval looks detections up
            # by image and category id (images and categories come from the ground truth): an empty
            # COCO() lets a detector that finds nothing score 0 through the same path as any other.
            coco_dt = COCO()
        ignored = {a["id"] for a in original.dataset.get("annotations", [])
                   if a.get("ignore", 0) or a.get("difficult", 0)}
        coco_eval = _COCOevalWithIgnore(coco_gt, coco_dt, iouType="bbox", ignored_ids=ignored, not_scored=not_scored)
        if img_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def summarize(coco_eval: COCOeval) -> tuple[dict[str, float], str]:
    """The twelve :data:`COCO_KEYS` (AP and AR) of an evaluated ``COCOeval`` and its 12-line summary text."""
    summary_buf = io.StringIO()
    with contextlib.redirect_stdout(summary_buf):
        coco_eval.summarize()
    metrics = {
        key: (float("nan") if value < 0 else float(value))
        for key, value in zip(COCO_KEYS, coco_eval.stats[: len(COCO_KEYS)])
    }
    return metrics, summary_buf.getvalue()


def run_cocoeval(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], *, img_ids: Iterable[int] | None = None
) -> tuple[dict[str, float], str]:
    """Run ``COCOeval`` (bbox) with its prints captured; return the metrics and the summary text.

    Args:
        coco_gt: ground truth.
        results: detections in the COCO results format (see :func:`predictions_to_coco_results`).
        img_ids: restrict evaluation to these images (default: every ground-truth image). An
            evaluator that saw only part of the dataset passes the ids it saw, so that unseen images
            do not count as missed objects.

    Returns:
        ``(metrics, summary)``: :data:`METRIC_KEYS` -> fraction in [0, 1] or NaN (no ground truth in
        that area range), and the standard 12-line ``COCOeval.summarize()`` text.
    """
    return summarize(make_cocoeval(coco_gt, results, img_ids=img_ids))


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    *,
    img_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box AP of ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth.
        results: detections in the COCO results format; may be empty (every AP is then 0, or NaN
            for an area range without ground truth).
        img_ids: restrict evaluation to these images (default: every ground-truth image).
        verbose: print the standard 12-line ``COCOeval`` summary (pycocotools' progress lines are
            always suppressed).

    Returns:
        :data:`METRIC_KEYS` -> fraction in [0, 1], or NaN where pycocotools reports -1 (no
        ground-truth box in that area range).
    """
    metrics, summary = run_cocoeval(coco_gt, results, img_ids=img_ids)
    if verbose:
        print(summary, end="")
    return metrics


def _json_safe(value: float) -> float | None:
    # json.dumps writes NaN as the bare token NaN, which strict JSON readers (jq, JavaScript)
    # reject; null says "undefined" in a form every reader accepts.
    return None if isinstance(value, float) and math.isnan(value) else value


class COCOEvaluator:
    """Accumulates model outputs over a dataset and scores them with pycocotools.

    Use as ``reset()``, then ``process(targets, outputs)`` per batch, then ``evaluate()``.
    Only images passed to ``process`` are scored (an image with zero detections still counts), so a
    partial pass over the dataset is not penalised for images it never saw.

    Attributes:
        summary: the 12-line ``COCOeval`` summary of the last :meth:`evaluate` ("" before).
        results: the COCO results of the last :meth:`evaluate` (what ``coco_results.json`` holds).
        coco_eval: the evaluated ``COCOeval`` of the last :meth:`evaluate` (None before, or when
            nothing was processed), for :mod:`detector.evaluation.analysis`: kept so that nobody
            has to read the results back and run COCOeval a second time.
    """

    def __init__(
        self,
        *,
        coco_gt: COCO,
        label_to_cat_id: Mapping[int, int],
        output_dir: str | os.PathLike | None = None,
        gather: Any = None,
    ) -> None:
        """
        Args:
            coco_gt: ground truth of the dataset being evaluated.
            label_to_cat_id: contiguous label 1..K -> COCO category id.
            output_dir: where :meth:`evaluate` writes ``coco_results.json`` and ``metrics.json``;
                None writes nothing.
            gather: ``gather(obj) -> [obj of every rank]`` for a sharded evaluation
                (:func:`detector.engine.distributed.all_gather_objects`): every rank then scores
                the predictions of all shards. None: this process saw everything.
        """
        self.coco_gt = coco_gt
        self.label_to_cat_id = dict(label_to_cat_id)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.gather = gather
        self.summary = ""
        self.results: list[dict] = []
        self.coco_eval: COCOeval | None = None
        self._predictions: dict[int, dict[str, Any]] = {}

    def reset(self) -> None:
        """Forget everything processed so far (call before each evaluation pass)."""
        self._predictions = {}
        self.summary = ""
        self.results = []
        self.coco_eval = None

    def process(
        self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record one batch.

        Args:
            targets: N dicts, each with ``image_id`` (COCO image id, int or 0-d tensor).
            outputs: N dicts from the model: ``boxes`` [D, 4] xyxy in original pixels, ``labels``
                [D], ``scores`` [D]. Tensors are moved to CPU here so GPU memory is not held across
                the whole dataset.
        """
        assert len(targets) == len(outputs), "one output per target expected"
        for target, output in zip(targets, outputs):
            image_id = int(target["image_id"])
            # A repeated id (e.g. a sampler padding the last batch) overwrites rather than doubling
            # the detections, which would add false positives.
            self._predictions[image_id] = {
                key: (output[key].detach().cpu() if hasattr(output[key], "detach") else output[key])
                for key in ("boxes", "labels", "scores")
            }

    def evaluate(self) -> dict[str, Any]:
        """Score everything processed since :meth:`reset`, writing result files if configured.

        Returns:
            :data:`COCO_KEYS` (fractions, NaN for area ranges without ground truth; all NaN when
            nothing was processed), plus ``num_images`` and ``num_detections``.
        """
        if self.gather is not None:  # the shards of every rank, merged
            merged: dict[int, dict[str, Any]] = {}
            for part in self.gather(self._predictions):
                merged.update(part)
            self._predictions = merged
        results = predictions_to_coco_results(self._predictions, self.label_to_cat_id)
        self.results = results
        if self._predictions:
            self.coco_eval = make_cocoeval(self.coco_gt, results, img_ids=self._predictions.keys())
            metrics, self.summary = summarize(self.coco_eval)
        else:
            # COCOeval over zero images would also yield all -1; say so directly.
            metrics, self.summary = {key: float("nan") for key in COCO_KEYS}, ""
        out: dict[str, Any] = dict(metrics)
        out["num_images"] = len(self._predictions)
        out["num_detections"] = len(results)
        if self.output_dir is not None:
            # Results first: metrics.json existing means the results it was computed from do too.
            atomic_write_json(self.output_dir / "coco_results.json", results, indent=None)
            atomic_write_json(
                self.output_dir / "metrics.json", {k: _json_safe(v) for k, v in out.items()}
            )
        return out
