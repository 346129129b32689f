"""A config read from a file (a checkpoint's stored training config) is data: check it before building.

A checkpoint stores the resolved training config so that ``tools/eval.py``, ``tools/infer.py`` and
``tools/dump_proposals.py`` can rebuild the model (and the val split) it was trained with. Hydra's
``instantiate`` would call whatever a ``_target_`` names, and a checkpoint read with
``torch.load(weights_only=True)`` can still hold any string: ``{"_target_": "builtins.open",
"_args_": ["PWNED", "w"]}`` is plain data. So a config that comes from a file is walked before
anything is built, and refused, with one line naming the key and the value, unless

- every ``_target_`` is one of this framework's own parts (:data:`MODEL_TARGETS` for the model,
  :data:`DATASET_TARGETS` for a dataset split), or one the *user* named on the command line
  (``trusted_targets=[mypkg.MyBackbone]``: a custom part is built because the user asked, never
  because a file said so);
- Hydra's other special keys are absent, except ``_partial_`` (a generator node uses it):
  ``_args_``, ``_recursive_`` and ``_convert_`` are never written by ``tools/train.py``;
- no string holds an interpolation (``${oc.env:...}``; a stored config is already resolved);
- every value is a plain type (str, int, float, bool, None, list, dict with string keys).

The allowlists are written out here rather than derived (e.g. "anything under ``detector.``"),
because the framework also defines callables that write files (``detector.utils.io``); the test
``tests/cli/test_stored_config.py`` checks that every part the shipped configs name is listed.

Shape shorthand: none (configs only).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detector.errors import CheckpointError

# The model's parts, as configs/model/*.yaml and configs/model/pooler/*.yaml name them.
MODEL_TARGETS = frozenset({
    "detector.modeling.FasterRCNN",
    "detector.modeling.DetectionTransform",
    "detector.modeling.backbone.VGG16Backbone",
    "detector.modeling.rpn.RPN",
    "detector.modeling.rpn.RPNHead",
    "detector.modeling.rpn.AnchorGenerator",
    "detector.modeling.BoxCoder",
    "detector.modeling.Matcher",
    "detector.modeling.BalancedPositiveNegativeSampler",
    "detector.modeling.roi_heads.RoIHeads",
    "detector.modeling.roi_heads.FC2BoxHead",
    "detector.modeling.roi_heads.FastRCNNPredictor",
    "detector.ops.RoIAlign",
    "detector.ops.RoIPool",
    "detector.ops.RoIWarp",
})

# Dataset splits, as configs/dataset/**.yaml name them. The generators are listed because a split
# drawn by one is read through it; a split rebuilt from a file is only read, never (re)generated
# (see ``build_split(..., from_file=...)`` in detector/cli/config.py).
DATASET_TARGETS = frozenset({
    "detector.data.CocoDetection",
    "detector.data.VOCDetection",
    "detector.data.YOLODetection",
    "detector.data.generated.generated_split",
    "detector.data.synthetic.ensure_synthetic_split",
    "detector.data.scenes.ensure_scenes_split",
})

_ALLOWED_SPECIAL_KEYS = frozenset({"_target_", "_partial_"})
_PLAIN = (str, int, float, bool, type(None))


def check_stored_config(
    node: Any, *, source: str | Path, key: str, allowed: Iterable[str], trusted: Iterable[str] = ()
) -> None:
    """Refuse ``node`` (one line: file, key, value) unless it names only allowed parts, as plain data.

    Args:
        node: The stored config node (plain containers, as ``torch.load`` returns them).
        source: The file it came from, for the message.
        key: The node's dotted key inside the stored config (``config.model``).
        allowed: The ``_target_`` values this framework builds from a file.
        trusted: ``_target_`` values the user named (``trusted_targets=[...]``).

    Raises:
        CheckpointError: The first offending key, before anything is built.
    """
    permitted = frozenset(allowed) | frozenset(str(t) for t in trusted)
    stack: list[tuple[str, Any]] = [(key, node)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise CheckpointError(f"{source}: {where} has a non-string key {k!r}; refused (a config is plain data)")
                child = f"{where}.{k}"
                if k.startswith("_") and k.endswith("_") and k not in _ALLOWED_SPECIAL_KEYS:
                    raise CheckpointError(
                        f"{source}: {child} is a Hydra special key that tools/train.py never writes; refused, "
                        f"nothing was built"
                    )
                if k == "_target_" and (not isinstance(v, str) or v not in permitted):
                    raise CheckpointError(
                        f"{source}: {child} = {v!r} is not a part of this framework; a file may only name the "
                        f"framework's own parts (nothing was built). If it is your own part, name it yourself: "
                        f"trusted_targets=[{v if isinstance(v, str) else '...'}]"
                    )
                if k == "_partial_" and not isinstance(v, bool):
                    raise CheckpointError(f"{source}: {child} = {v!r} must be true or false; refused, nothing was built")
                stack.append((child, v))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif not isinstance(value, _PLAIN):
            raise CheckpointError(
                f"{source}: {where} holds a {type(value).__name__}, not plain config data; refused, nothing was built"
            )
        elif isinstance(value, str) and "${" in value:
            raise CheckpointError(
                f"{source}: {where} = {value!r} holds an interpolation; a stored config is already resolved, so "
                f"this one was not written by tools/train.py; refused, nothing was built"
            )


def stored_config(state: Any, *, source: str | Path) -> dict:
    """The checkpoint's stored training config (a dict with ``model``), or one line saying why not."""
    stored = state.get("config") if isinstance(state, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise CheckpointError(f"{source} holds no training config; it was not written by tools/train.py")
    return stored


def targets_in(node: Any) -> list[str]:
    """Every ``_target_`` string in a (user's own) config tree: what the user chose to build."""
    found, stack = [], [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("_target_"), str):
                found.append(value["_target_"])
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return sorted(set(found))
