"""detector: a readable, complete Fast/Faster R-CNN framework with switchable RoIPool / RoIAlign.

The Python API (``detector.load``, ``detector.train``, ``detector.evaluate``) lives in the config layer,
:mod:`detector.cli.api`, and is imported on first use, so that ``import detector`` alone (the
framework's modules: ops, modeling, data, engine, evaluation) never imports Hydra.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["evaluate", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from detector.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
