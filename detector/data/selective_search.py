"""Selective search proposals (Uijlings et al., IJCV 2013), as the Fast R-CNN paper used them.

From the maintained pure-Python ``selective-search`` package (on scikit-image), an optional extra:
``pip install -e ".[proposals]"``. It avoids OpenCV's contrib build (``cv2.ximgproc``), which
conflicts with the ``opencv-python-headless`` that albumentations requires.

Two things are done here rather than through the package's ``selective_search()``:

* Its ``HierarchicalGrouping.build_regions`` calls ``scipy.ndimage.find_objects`` on a boolean mask,
  which SciPy >= 1.11 refuses (``'numpy.bool' object cannot be interpreted as an integer``): the
  function is wrapped to pass the mask as integers (same result).
* Its ``selective_search()`` runs the strategies through ``joblib.Parallel(n_jobs=-1)`` in worker
  processes that do not see that fix, and would oversubscribe the CPU when images are already spread
  over processes: the strategies run in turn, by ``selective_search_one``; ``tools/dump_proposals.py``
  parallelises over images instead.

Boxes come in the package's hierarchical order (the last merges, i.e. the largest regions, first)
without scores; duplicates are removed keeping the first.

Shape shorthand:
    H, W: image height and width; P: proposals.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from detector.errors import ConfigError

__all__ = ["MODES", "selective_search"]

MODES = ("single", "fast", "quality")  # the package's strategies: 1, 8 and 80 diversifications


def _import():
    try:
        import scipy.ndimage
        import selective_search.structure as structure
        from selective_search.core import selective_search_one
        from selective_search.util import load_strategy
    except ImportError:
        raise ConfigError(
            "method=selective_search needs the selective-search package: pip install -e \".[proposals]\""
        ) from None
    if not getattr(structure.find_objects, "_integer_mask", False):
        def find_objects(mask, max_label=0):
            return scipy.ndimage.find_objects(np.asarray(mask, dtype=np.int32), max_label)

        find_objects._integer_mask = True  # type: ignore[attr-defined]
        structure.find_objects = find_objects
    return selective_search_one, load_strategy


def selective_search(pixels: np.ndarray, *, mode: str = "single") -> Tensor:
    """Proposals of one uint8 ``[H, W, 3]`` RGB image: float32 ``[P, 4]`` xyxy pixels, in order."""
    if mode not in MODES:
        raise ConfigError(f"selective search mode must be one of {', '.join(MODES)}, got {mode!r}")
    search_one, load_strategy = _import()
    import warnings

    boxes: list[tuple[int, int, int, int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image's local_binary_pattern on float images
        for color_space, k, similarity in load_strategy(mode):
            found, _ = search_one(pixels, color_space, k, similarity)
            boxes += found
    unique = list(dict.fromkeys(boxes))
    return torch.tensor(unique, dtype=torch.float32).reshape(-1, 4)
