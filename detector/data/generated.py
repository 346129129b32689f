"""A generated dataset split as a dataset object: draw it on first use, then read it as COCO JSON.

The embedded default and the held-out family (``configs/dataset/synthetic.yaml``,
``configs/dataset/family/``) are drawn by a generator function, ``generator(root, *, split,
num_images, seed) -> (images_dir, annotations_file)``, that reuses a complete split on disk. This
factory lets their dataset configs name a ``_target_`` like every other format, so ``tools/`` build
all datasets the same way (``hydra.utils.instantiate``), with no special case for generated data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from detector.data.coco import CocoDetection
from detector.errors import DatasetError

__all__ = ["generated_split"]

logger = logging.getLogger(__name__)


def generated_split(
    *,
    generator: Callable[..., tuple[Path, Path]],
    root: str | Path,
    split: str,
    num_images: int,
    seed: int,
    create: bool = True,
    **dataset_kwargs: Any,
) -> CocoDetection:
    """Generate ``split`` under ``root`` unless it is there already, and load it.

    Args:
        generator: e.g. ``functools.partial(ensure_synthetic_split, max_objects=6)``.
        root, split, num_images, seed: Passed to ``generator``.
        create: False reads ``root/split/{images, annotations.json}`` as it is and never calls the
            generator (which would write, and redraw a split it finds stale): the tools use it for a
            split named by a checkpoint's stored config, a file that must not make them write.
        **dataset_kwargs: For :class:`~detector.data.coco.CocoDetection` (``transforms``,
            ``skip_empty``, ...).

    Raises:
        DatasetError: ``create=False`` and the split is not on disk, or was drawn with other
            parameters than the config names (say a training run with ``dataset.val.num_images=8``
            redrew it since): its numbers would not be the ones the config stands for.
    """
    annotations = Path(root) / split / "annotations.json"
    if not create:
        if not annotations.is_file():
            raise DatasetError(
                f"{annotations}: this generated split is not on disk; draw it by training on it "
                f"(tools/train.py) or pass dataset=... to name the data"
            )
        _check_drawn_as_named(annotations, generator, split=split, num_images=num_images, seed=seed)
        return CocoDetection(images=annotations.parent / "images", annotations=annotations, **dataset_kwargs)
    if not annotations.is_file():
        logger.warning("generating the %s split (%d images) under %s: once, no download", split, num_images, root)
    images, annotations = generator(root, split=split, num_images=int(num_images), seed=int(seed))
    return CocoDetection(images=images, annotations=annotations, **dataset_kwargs)


def _check_drawn_as_named(annotations: Path, generator: Callable[..., Any], **named: Any) -> None:
    """Refuse a split on disk whose ``info["generator"]`` contradicts the parameters the config names.

    The generators record their parameters there (:mod:`detector.data.synthetic`,
    :mod:`detector.data.scenes`); a file without that record is left to the COCO reader.
    """
    try:
        with open(annotations, encoding="utf-8") as f:
            drawn = json.load(f)["info"]["generator"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(drawn, dict):
        return
    wanted = {**getattr(generator, "keywords", {}), **named}
    differ = {k: (drawn[k], v) for k, v in wanted.items() if k in drawn and drawn[k] != v}
    if differ:
        on_disk = ", ".join(f"{k}={a!r}" for k, (a, _) in differ.items())
        named_here = ", ".join(f"{k}={b!r}" for k, (_, b) in differ.items())
        raise DatasetError(
            f"{annotations}: this generated split was drawn with {on_disk}, not the {named_here} the "
            f"config names, so its numbers would not be comparable; redraw it by training on it "
            f"(tools/train.py) or pass dataset=... to name the data"
        )
