"""A generated dataset split as a dataset object: draw it on first use, then read it as COCO JSON.

The embedded default and the held-out family (``configs/dataset/synthetic.yaml``,
``configs/dataset/family/``) are drawn by a generator function, ``generator(root, *, split,
num_images, seed) -> (images_dir, annotations_file)``, that reuses a complete split on disk. This
factory lets their dataset configs name a ``_target_`` like every other format, so ``tools/`` build
all datasets the same way (``hydra.utils.instantiate``), with no special case for generated data.
"""

from __future__ import annotations

import inspect
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
    """Refuse a split on disk whose ``info["generator"]`` is not the record this call would write.

    The generators record their parameters there (:mod:`detector.data.synthetic`,
    :mod:`detector.data.scenes`) and expose the function that makes the record as
    ``recorded_params``: the record the generator's own staleness test compares is then rebuilt here,
    defaults the config does not name included. A generator without one (a user's) is checked on the
    parameters the config names; a file without a record is left to the COCO reader.
    """
    try:
        with open(annotations, encoding="utf-8") as f:
            drawn = json.load(f)["info"]["generator"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(drawn, dict):
        return
    keywords = {**getattr(generator, "keywords", {}), **named}
    wanted = _recorded_params(generator, keywords)
    if wanted is None:  # only what the config names, where the record has it
        wanted = {k: v for k, v in keywords.items() if k in drawn}
        drawn = {k: drawn[k] for k in wanted}
    differ = [k for k in dict.fromkeys([*wanted, *drawn]) if drawn.get(k) != wanted.get(k)]
    if differ:
        on_disk = ", ".join(f"{k}={drawn.get(k)!r}" for k in differ)
        named_here = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
        raise DatasetError(
            f"{annotations}: this generated split was drawn with {on_disk}, not the {named_here} the "
            f"config names, so its numbers would not be comparable; redraw it by training on it "
            f"(tools/train.py) or pass dataset=... to name the data"
        )


def _recorded_params(generator: Callable[..., Any], keywords: dict[str, Any]) -> dict[str, Any] | None:
    """The ``info["generator"]`` record ``generator(root, **keywords)`` would write, or None if it
    does not say (no ``recorded_params`` on the function)."""
    func = getattr(generator, "func", generator)
    record = getattr(func, "recorded_params", None)
    if record is None:
        return None
    call = inspect.signature(func).bind_partial(**keywords)
    call.apply_defaults()
    return record(**{k: v for k, v in call.arguments.items() if k != "root"})
