"""Start a new run from someone else's weights: keep every tensor that fits, and the classes it knows.

``load_finetune_weights`` is what ``model.weights=PATH`` does (a new run: iteration 0, a fresh
optimizer; ``resume=true`` is the other switch, "continue this run"):

* Every tensor of the model whose name and shape match the file's is loaded. A tensor whose shape
  differs is left as the model initialised it, and reported (name, file shape, model shape); names
  the model has and the file lacks (missing) and the other way round (unexpected) are reported too.
* The class-dependent rows of the box predictor are mapped by class *name* when both class lists
  are known (the checkpoint stores its own): a new class that the checkpoint also knew gets the
  checkpoint's score row and its 4 box-delta rows, and the background row is always kept, even
  when the number of classes differs (the layer's shape does) or the same names come in another
  order (the shape is equal but a plain copy would give each class another's detector). The rest
  of the rows keep their fresh initialisation. detectron2 and torchvision re-initialise the whole
  layer instead; keeping what is known makes a fine-tune to an overlapping class list start ahead.

Files come from strangers (a colleague, a model zoo): they are read with
``torch.load(weights_only=True)`` by :func:`detector.engine.checkpoint.read_weights_file`, so loading
cannot run code.

Shape shorthand:
    K_old, K_new: foreground classes of the checkpoint and of the model (background is row 0).
    D: the predictor's input features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from detector.errors import CheckpointError

__all__ = ["FinetuneReport", "load_finetune_weights"]

# The class-dependent layers of FastRCNNPredictor: rows per class (score: 1, box deltas: 4).
PREDICTOR_ROWS = {
    "roi_heads.predictor.cls_score.weight": 1,
    "roi_heads.predictor.cls_score.bias": 1,
    "roi_heads.predictor.bbox_pred.weight": 4,
    "roi_heads.predictor.bbox_pred.bias": 4,
}


@dataclass
class FinetuneReport:
    """What :func:`load_finetune_weights` did, for one log block."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    class_rows: dict[str, str] = field(default_factory=dict)  # new class -> checkpoint class copied
    new_classes: list[str] = field(default_factory=list)  # classes whose rows start fresh
    mapped: list[str] = field(default_factory=list)  # predictor tensors whose rows were mapped by name

    def lines(self) -> list[str]:
        out = [f"loaded {len(self.loaded)} tensors"]
        if self.class_rows or self.new_classes:
            copied = ", ".join(self.class_rows) or "none"
            out.append(f"box predictor rows copied by class name (+ background): {copied}")
            if self.new_classes:
                out.append(f"box predictor rows initialised fresh (classes the checkpoint lacks): {', '.join(self.new_classes)}")
        for name, old, new in self.reinitialised:
            if name not in self.mapped:  # a mapped tensor's new shape is explained by the lines above
                out.append(f"re-initialised (shape differs): {name}  checkpoint {list(old)}  model {list(new)}")
        for name in self.missing:
            out.append(f"missing in the checkpoint (kept as initialised): {name}")
        for name in self.unexpected:
            out.append(f"unexpected in the checkpoint (ignored): {name}")
        return out


def load_finetune_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    checkpoint_classes: Sequence[str] | None = None,
    model_classes: Sequence[str] | None = None,
) -> FinetuneReport:
    """Load what fits of ``state_dict`` into ``model`` (see the module docstring).

    Args:
        model: The freshly built model.
        state_dict: The file's weights (a checkpoint's ``"model"`` entry or a plain state dict).
        source: The file, for messages.
        checkpoint_classes: The checkpoint's class names (label ``i`` = ``checkpoint_classes[i - 1]``),
            when it stores them.
        model_classes: The model's class names, from its dataset.

    Returns:
        The report of what was loaded, re-initialised, mapped, missing and unexpected.

    Raises:
        CheckpointError: Not one tensor of the file fits the model (a foreign file).
    """
    own = model.state_dict()
    report = FinetuneReport()
    update: dict[str, Tensor] = {}
    by_name = checkpoint_classes is not None and model_classes is not None
    for name, target in own.items():
        if name not in state_dict:
            report.missing.append(name)
            continue
        value = state_dict[name]
        if not isinstance(value, Tensor):
            report.unexpected.append(name)
            continue
        mapped = None
        if by_name and name in PREDICTOR_ROWS:
            mapped = _map_rows(value, target, PREDICTOR_ROWS[name], list(checkpoint_classes), list(model_classes), report)
        if mapped is not None:
            update[name] = mapped
            report.mapped.append(name)
            if tuple(value.shape) != tuple(target.shape):
                report.reinitialised.append((name, tuple(value.shape), tuple(target.shape)))
            report.loaded.append(name)
        elif tuple(value.shape) == tuple(target.shape):
            update[name] = value.to(target.dtype)
            report.loaded.append(name)
        else:
            report.reinitialised.append((name, tuple(value.shape), tuple(target.shape)))
    report.unexpected += [name for name in state_dict if name not in own]
    if not report.loaded:
        raise CheckpointError(
            f"{source}: none of its {len(state_dict)} tensors fits the model (0 of {len(own)} names and "
            f"shapes match); is it a checkpoint of this framework or a state dict of this model?"
        )
    model.load_state_dict(update, strict=False)
    return report


def _map_rows(
    value: Tensor, target: Tensor, rows: int, old: list[str], new: list[str], report: FinetuneReport
) -> Tensor | None:
    """The model's predictor tensor with background and shared-class rows taken from the checkpoint.

    None when the tensors are not laid out as the class lists say (another input width ``D``, or
    class lists of other lengths than the rows): then the rule for any other tensor applies.
    """
    if value.shape[1:] != target.shape[1:] or value.shape[0] != rows * (len(old) + 1) or target.shape[0] != rows * (len(new) + 1):
        return None
    out = target.clone()
    out[:rows] = value[:rows]  # background
    report.class_rows.clear()
    report.new_classes = []
    old_label = {name: i + 1 for i, name in enumerate(old)}
    for j, name in enumerate(new, start=1):
        i = old_label.get(name)
        if i is None:
            report.new_classes.append(name)
            continue
        out[rows * j : rows * (j + 1)] = value[rows * i : rows * (i + 1)]
        report.class_rows[name] = name
    return out
