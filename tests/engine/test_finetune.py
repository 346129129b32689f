"""Fine-tuning: what fits is loaded, predictor rows follow class names, strangers' files cannot run code."""

from __future__ import annotations

import pickle

import pytest
import torch

from conftest import tiny_model
from detector.engine.state import TrainState
from detector.engine import load_finetune_weights, read_weights_file, save_checkpoint
from detector.engine.finetune import PREDICTOR_ROWS
from detector.errors import CheckpointError


def test_rows_of_shared_classes_and_background_are_copied_by_name(tmp_path):
    torch.manual_seed(0)
    old = tiny_model(class_names=["cat", "dog", "bird"])
    new = tiny_model(class_names=["dog", "fish"])
    report = load_finetune_weights(new, old.state_dict(), source="x", checkpoint_classes=["cat", "dog", "bird"],
                                   model_classes=["dog", "fish"])
    o, n = old.roi_heads.predictor, new.roi_heads.predictor
    # Background (row 0) and "dog" (old label 2 -> new label 1) come from the checkpoint.
    torch.testing.assert_close(n.cls_score.weight[[0, 1]], o.cls_score.weight[[0, 2]])
    torch.testing.assert_close(n.cls_score.bias[[0, 1]], o.cls_score.bias[[0, 2]])
    torch.testing.assert_close(n.bbox_pred.weight[4:8], o.bbox_pred.weight[8:12])
    # "fish" keeps a fresh initialisation (same scale as a fresh layer, not the checkpoint's rows).
    assert not any(torch.equal(n.cls_score.weight[2], o.cls_score.weight[i]) for i in range(4))
    assert 0.002 < n.cls_score.weight[2].std().item() < 0.05  # the predictor's N(0, 0.01) init
    # Everything else is the checkpoint's.
    torch.testing.assert_close(new.backbone.state_dict(), old.backbone.state_dict())
    assert report.class_rows == {"dog": "dog"} and report.new_classes == ["fish"]
    text = "\n".join(report.lines())
    assert "copied by class name (+ background): dog" in text and "initialised fresh" in text and "fish" in text


def test_same_count_other_order_is_permuted_not_copied():
    torch.manual_seed(0)
    old = tiny_model(class_names=["a", "b"])
    new = tiny_model(class_names=["b", "a"])
    load_finetune_weights(new, old.state_dict(), source="x", checkpoint_classes=["a", "b"], model_classes=["b", "a"])
    torch.testing.assert_close(new.roi_heads.predictor.cls_score.weight[[1, 2]], old.roi_heads.predictor.cls_score.weight[[2, 1]])


def test_every_tensor_is_accounted_for():
    torch.manual_seed(0)
    old = tiny_model(class_names=["a", "b"])
    new = tiny_model(class_names=["b", "a"])
    state = dict(old.state_dict())
    del state["rpn.head.conv.weight"]  # early in the state dict: everything after it still loads
    state["roi_heads.box_head.layers.1.bias"] = 3  # not a tensor (a hand-edited file)
    report = load_finetune_weights(new, {**state, "extra.a": torch.zeros(1)}, source="x",
                                   checkpoint_classes=["a", "b"], model_classes=["b", "a"])
    own = list(new.state_dict())
    assert report.missing == ["rpn.head.conv.weight"]
    assert report.unexpected == ["roi_heads.box_head.layers.1.bias", "extra.a"]
    assert report.loaded == [n for n in own if n not in ("rpn.head.conv.weight", "roi_heads.box_head.layers.1.bias")]
    assert report.reinitialised == [] and sorted(report.mapped) == sorted(PREDICTOR_ROWS)  # same shapes, permuted rows
    torch.testing.assert_close(new.roi_heads.box_head.layers[3].weight, old.roi_heads.box_head.layers[3].weight)
    torch.testing.assert_close(new.rpn.head.anchor_deltas.weight, old.rpn.head.anchor_deltas.weight)
    # Only one side's class names: nothing to map by, so the predictor loads by position.
    new = tiny_model(class_names=["b", "a"])
    report = load_finetune_weights(new, old.state_dict(), source="x", checkpoint_classes=None, model_classes=["b", "a"])
    assert report.mapped == [] and report.class_rows == {}
    torch.testing.assert_close(new.roi_heads.predictor.cls_score.weight, old.roi_heads.predictor.cls_score.weight)


def test_without_class_names_mismatched_shapes_are_reinitialised_and_listed():
    old = tiny_model(class_names=["a", "b", "c"])
    new = tiny_model(class_names=["a"])
    report = load_finetune_weights(new, {**old.state_dict(), "extra.thing": torch.zeros(1)}, source="x")
    names = {name for name, _, _ in report.reinitialised}
    assert names == {"roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias",
                     "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias"}
    assert report.unexpected == ["extra.thing"]
    assert "re-initialised (shape differs): roi_heads.predictor.cls_score.weight  checkpoint [4, 32]  model [2, 32]" in report.lines()


def test_read_weights_file_forms(tmp_path):
    model = tiny_model(class_names=["a", "b"])
    save_checkpoint(tmp_path / "ckpt.pth", TrainState(model=model, iteration=3), config={"x": 1},
                    extra={"dataset": {"class_names": ["a", "b"]}})
    weights, classes = read_weights_file(tmp_path / "ckpt.pth")
    assert classes == ["a", "b"] and set(weights) == set(model.state_dict())
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    weights, classes = read_weights_file(tmp_path / "ddp.pth")
    assert classes is None and set(weights) == set(model.state_dict())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "lightning.pth")
    assert set(read_weights_file(tmp_path / "lightning.pth")[0]) == set(model.state_dict())
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, tmp_path / "script.pth")
    weights, classes = read_weights_file(tmp_path / "script.pth")
    assert classes is None and set(weights) == set(model.state_dict())


def test_an_unknown_class_before_a_known_one_still_copies_the_known_rows():
    torch.manual_seed(0)
    old = tiny_model(class_names=["cat", "dog"])
    new = tiny_model(class_names=["fish", "dog", "cat", "owl"])
    report = load_finetune_weights(new, old.state_dict(), source="x", checkpoint_classes=["cat", "dog"],
                                   model_classes=["fish", "dog", "cat", "owl"])
    o, n = old.roi_heads.predictor, new.roi_heads.predictor
    torch.testing.assert_close(n.cls_score.weight[[0, 2, 3]], o.cls_score.weight[[0, 2, 1]])
    torch.testing.assert_close(n.bbox_pred.bias[8:16], torch.cat([o.bbox_pred.bias[8:12], o.bbox_pred.bias[4:8]]))
    assert report.class_rows == {"dog": "dog", "cat": "cat"} and report.new_classes == ["fish", "owl"]
    # Every line, as a user reads it: the predictor's shape change is explained by the class rows.
    assert report.lines() == [
        f"loaded {len(report.loaded)} tensors",
        "box predictor rows copied by class name (+ background): dog, cat",
        "box predictor rows initialised fresh (classes the checkpoint lacks): fish, owl",
    ]


def test_report_lines_when_no_class_is_shared():
    old = tiny_model(class_names=["cat"])
    new = tiny_model(class_names=["fish"])
    state = {k: v for k, v in old.state_dict().items() if k != "rpn.head.conv.weight"}
    report = load_finetune_weights(new, {**state, "extra": torch.zeros(1)}, source="x", checkpoint_classes=["cat"],
                                   model_classes=["fish"])
    assert report.lines() == [
        f"loaded {len(report.loaded)} tensors",
        "box predictor rows copied by class name (+ background): none",
        "box predictor rows initialised fresh (classes the checkpoint lacks): fish",
        *[f"missing in the checkpoint (kept as initialised): {name}" for name in report.missing],
        "unexpected in the checkpoint (ignored): extra",
    ]
    assert report.missing == ["rpn.head.conv.weight"]


def test_predictor_rows_of_another_layout_are_not_mapped():
    torch.manual_seed(0)
    old = tiny_model(class_names=["a", "b"])
    state = dict(old.state_dict())
    # fc7 of another width: the class rows exist but their columns mean something else.
    state["roi_heads.predictor.cls_score.weight"] = torch.randn(3, 7)
    new = tiny_model(class_names=["a", "b"])
    fresh = new.roi_heads.predictor.cls_score.weight.detach().clone()
    report = load_finetune_weights(new, state, source="x", checkpoint_classes=["a", "b"], model_classes=["a", "b"])
    torch.testing.assert_close(new.roi_heads.predictor.cls_score.weight, fresh)
    assert ("roi_heads.predictor.cls_score.weight", (3, 7), tuple(fresh.shape)) in report.reinitialised
    assert "re-initialised (shape differs): roi_heads.predictor.cls_score.weight  checkpoint [3, 7]  model " \
        f"{list(fresh.shape)}" in report.lines()
    assert "roi_heads.predictor.cls_score.weight" not in report.mapped and "roi_heads.predictor.cls_score.bias" in report.mapped
    # Class names that do not describe the model (3 names, 2 classes): nothing is mapped by name and the
    # rule for every other tensor applies (equal shapes load as they are).
    new = tiny_model(class_names=["a", "b"])
    report = load_finetune_weights(new, old.state_dict(), source="x", checkpoint_classes=["a", "b"],
                                   model_classes=["a", "b", "c"])
    torch.testing.assert_close(new.roi_heads.predictor.bbox_pred.weight, old.roi_heads.predictor.bbox_pred.weight)
    assert report.mapped == [] and report.class_rows == {} and report.new_classes == []


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_files_that_could_run_code_are_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": {"w": Payload()}}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: it holds Python objects.*GLOBAL print") as err:
        read_weights_file(tmp_path / "evil.pth")
    assert "\n" not in str(err.value)
    from detector.engine import load_checkpoint

    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        read_weights_file(tmp_path / "nope.pth")
    torch.save({"a": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"foreign\.pth: none of its 1 tensors fits the model"):
        load_finetune_weights(tiny_model(), read_weights_file(tmp_path / "foreign.pth")[0], source=str(tmp_path / "foreign.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_weights_file(tmp_path / "list.pth")
