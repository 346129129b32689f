"""A generated dataset split as a dataset object: draw it on first use, then read it as COCO JSON.

The embedded default and the held-out family (``configs/dataset/synthetic.yaml``,
``configs/dataset/family/``) are drawn by a generator function, ``generator(root, *, split,
num_images, seed) -> (images_dir, annotations_file)``, that reuses a complete split on disk. This
factory lets their dataset configs name a ``_target_`` like every other format, so ``tools/`` build
all datasets the same way (``hydra.utils.instantiate``), with no special case for generated data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from detector.data.coco import CocoDetection

__all__ = ["generated_split"]

logger = logging.getLogger(__name__)


def generated_split(
    *,
    generator: Callable[..., tuple[Path, Path]],
    root: str | Path,
    split: str,
    num_images: int,
    seed: int,
    **dataset_kwargs: Any,
) -> CocoDetection:
    """Generate ``split`` under ``root`` unless it is there already, and load it.

    Args:
        generator: e.g. ``functools.partial(ensure_synthetic_split, max_objects=6)``.
        root, split, num_images, seed: Passed to ``generator``.
        **dataset_kwargs: For :class:`~detector.data.coco.CocoDetection` (``transforms``,
            ``skip_empty``, ...).
    """
    if not (Path(root) / split / "annotations.json").is_file():
        logger.warning("generating the %s split (%d images) under %s: once, no download", split, num_images, root)
    images, annotations = generator(root, split=split, num_images=int(num_images), seed=int(seed))
    return CocoDetection(images=images, annotations=annotations, **dataset_kwargs)
