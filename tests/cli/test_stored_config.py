"""A checkpoint's stored config is data: it cannot choose what gets imported or called.

The reproduction is the attack itself (a ``_target_`` of ``builtins.open`` in a real checkpoint's
stored config, through eval, infer and dump_proposals); the fuzz test replaces every value of a real
stored config with ``_target_``-like values and callables and records every import Hydra is asked
for, checking it against the allowlists.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, TINY_MODEL, compose_config, tiny_model
from detector.engine.state import TrainState
from detector.engine import save_checkpoint
from detector.errors import CheckpointError, ConfigError, DatasetError, DetectorError
from detector.cli.stored_config import DATASET_TARGETS, MODEL_TARGETS, check_stored_config

DATA = ["dataset.train.num_images=2", "dataset.val.num_images=2", "dataset.generator.min_image_size=64",
        "dataset.generator.max_image_size=64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real checkpoint (the tiny model, the synthetic val split drawn on disk) and its folder."""
    tmp = tmp_path_factory.mktemp("stored")
    cfg = compose_config("train", [*TINY_MODEL, *DATA, f"dataset.root={tmp / 'data'}"])
    from detector.cli import config as config_utils
    val = config_utils.build_split(cfg.dataset.val, what="dataset.val")  # draws the split once
    names = list(val.class_names)
    model = tiny_model(class_names=names)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    path = save_checkpoint(tmp / "model_final.pth", TrainState(model=model, iteration=1), config=resolved,
                           extra={"dataset": {"class_names": names}})
    return tmp, path


def _poisoned(path: Path, out: Path, edit) -> Path:
    state = torch.load(path, weights_only=True)  # the attacker's route: a file that loads as plain data
    edit(state["config"])
    torch.save(state, out)
    return out


OPEN = {"_target_": "builtins.open", "_args_": ["PWNED", "w"]}


def _eval(checkpoint, out, **extra):
    from detector.cli import eval as eval_tool

    return eval_tool.evaluate(OmegaConf.create({
        "checkpoints": [str(checkpoint)], "results": [], "dataset": None, "voc_protocol": "devkit",
        "voc_results": False, "device": "cpu", "batch_size": 2, "num_workers": 0, "output_dir": str(out),
        "progress": False, **extra}))


@pytest.mark.parametrize("where", ["dataset.val", "model.backbone", "model.pooler", "model.rpn.matcher", "model"])
def test_eval_refuses_a_checkpoint_that_names_a_foreign_callable(run, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    tmp, path = run

    def edit(config):
        node, *rest = where.split(".")
        parent = config[node]
        for key in rest[:-1]:
            parent = parent[key]
        if rest:
            parent[rest[-1]] = dict(OPEN)
        else:
            parent["_target_"] = "builtins.open"

    bad = _poisoned(path, tmp_path / "x.pth", edit)
    with pytest.raises(CheckpointError, match=r"x\.pth: config\..*(_target_ = 'builtins.open'|_args_)"):
        _eval(bad, tmp_path / "eval")
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "eval").exists()  # refused before anything was built or written


def test_infer_and_dump_proposals_refuse_it_too(run, tmp_path, monkeypatch):
    from detector.cli import dump_proposals
    from detector.cli import infer

    monkeypatch.chdir(tmp_path)
    _, path = run
    bad = _poisoned(path, tmp_path / "x.pth", lambda c: c["model"]["roi_heads"].update(box_head=dict(OPEN)))
    Image.new("RGB", (64, 64)).save(tmp_path / "a.jpg")
    with pytest.raises(CheckpointError, match="builtins.open"):
        infer.infer(OmegaConf.create({"checkpoint": str(bad), "input": str(tmp_path / "a.jpg"), "score_thresh": 0.5,
                                      "output_dir": str(tmp_path / "out"), "device": "cpu", "batch_size": 1,
                                      "progress": False}))
    bad = _poisoned(path, tmp_path / "y.pth", lambda c: c["dataset"].update(val=dict(OPEN)))
    with pytest.raises(CheckpointError, match=r"config\.dataset\.val\._target_ = 'builtins.open'"):
        dump_proposals.dump(OmegaConf.create({
            "method": "rpn", "checkpoint": str(bad), "split": "val", "output": str(tmp_path / "p.pt"),
            "num_proposals": 10, "device": "cpu", "batch_size": 1, "num_workers": 0, "progress": False,
            "dataset": None, "convert": None}))
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "p.pt").exists()


def test_a_users_own_part_is_built_when_the_user_names_it(run, tmp_path):
    """trusted_targets on the command line is the user's choice; the same file without it is refused."""
    _, path = run
    target = "detector.modeling.backbone.vgg16.VGG16Backbone"  # importable, but not the configs' spelling
    bad = _poisoned(path, tmp_path / "x.pth", lambda c: c["model"]["backbone"].update(_target_=target))
    with pytest.raises(CheckpointError, match=rf"trusted_targets=\[{target}\]"):
        _eval(bad, tmp_path / "refused")
    rows = _eval(bad, tmp_path / "trusted", trusted_targets=[target])
    assert len(rows) == 1 and rows[0]["model"].startswith("RoI")


def test_a_generated_split_named_by_a_file_is_read_never_written(run, tmp_path, monkeypatch):
    """A file naming a generator at another root must not make eval draw (write) a dataset there."""
    monkeypatch.chdir(tmp_path)
    tmp, path = run
    victim = tmp_path / "photos"
    (victim / "val").mkdir(parents=True)
    (victim / "val" / "annotations.json").write_text('{"the user": "own file"}')
    bad = _poisoned(path, tmp_path / "x.pth", lambda c: c["dataset"]["val"].update(root=str(victim)))
    with pytest.raises(DetectorError):
        _eval(bad, tmp_path / "eval")
    assert (victim / "val" / "annotations.json").read_text() == '{"the user": "own file"}'
    assert not (victim / "val" / "images").exists()
    # A split that is not on disk at all: one line, nothing drawn.
    bad = _poisoned(path, tmp_path / "y.pth", lambda c: c["dataset"]["val"].update(root=str(tmp_path / "new")))
    with pytest.raises(DatasetError, match="not on disk"):
        _eval(bad, tmp_path / "eval2")
    assert not (tmp_path / "new").exists()


def test_interpolations_and_non_plain_values_are_refused(tmp_path):
    for node, pattern in (
        ({"_target_": "detector.ops.RoIPool", "quantization": "${oc.env:HOME}"}, "interpolation"),
        ({"_target_": "detector.ops.RoIPool", "_recursive_": False}, "special key"),
        ({"_target_": ["detector.ops.RoIPool"]}, "not a part"),
        ({"_target_": "detector.ops.RoIPool", "x": torch.zeros(1)}, "Tensor"),
        ({1: "a"}, "non-string key"),
    ):
        with pytest.raises(CheckpointError, match=pattern):
            check_stored_config(node, source="f.pth", key="config.model.pooler", allowed=MODEL_TARGETS)


def test_every_part_the_shipped_configs_name_is_allowed():
    """The allowlists cover the configs (so no legitimate checkpoint is refused) and nothing generic."""
    def targets(folder):
        found = set()
        for f in (ROOT / "configs" / folder).rglob("*.yaml"):
            stack = [yaml.safe_load(f.read_text())]
            while stack:
                value = stack.pop()
                if isinstance(value, dict):
                    found.update([value["_target_"]] if "_target_" in value else [])
                    stack.extend(value.values())
        return found

    assert targets("model") and targets("model") <= MODEL_TARGETS
    assert targets("dataset") and targets("dataset") <= DATASET_TARGETS
    assert all(t.startswith("detector.") and ".utils." not in t for t in MODEL_TARGETS | DATASET_TARGETS)


PAYLOADS = ["builtins.open", "os.system", "detector.utils.io.atomic_write_text", "torch.hub.load",
            {"_target_": "builtins.exec", "_args_": ["open('PWNED','w')"]},
            {"_target_": "os.makedirs", "name": "PWNED"}, "${oc.env:HOME}", "${repo_root:}"]


def _leaves(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*prefix, i))
    yield prefix


def _set(node, keys, value):
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def test_fuzz_every_value_of_a_real_stored_config(run, tmp_path, monkeypatch):
    """Every value (and every node's _target_) replaced by each payload: Hydra imports only allowed parts."""
    import hydra._internal.instantiate._instantiate2 as inst

    from detector.cli.config import build_split, model_from_checkpoint

    monkeypatch.chdir(tmp_path)
    _, path = run
    state = torch.load(path, weights_only=True)
    located: list[str] = []
    real_locate = inst._locate

    def spy(target):
        located.append(target)
        return real_locate(target)

    monkeypatch.setattr(inst, "_locate", spy)
    cases = built = 0
    for root_key, allowed in (("model", MODEL_TARGETS), ("dataset", DATASET_TARGETS)):
        for keys in _leaves(state["config"][root_key]):
            for payload in PAYLOADS:
                mutated = {**state, "config": copy.deepcopy(state["config"])}  # the weights are not mutated
                where = mutated["config"][root_key]
                if keys:
                    _set(where, keys, copy.deepcopy(payload))
                else:
                    where["_target_"] = payload
                located.clear()
                cases += 1
                try:
                    if root_key == "model":
                        model_from_checkpoint(path, mutated, "cpu")
                    else:
                        node = mutated["config"]["dataset"].get("val")
                        build_split(node, what="config.dataset.val", from_file=path)
                    built += 1
                except (DetectorError, ConfigError):
                    pass
                outside = [t for t in located if t not in allowed]
                assert not outside, (root_key, keys, payload, outside)
                assert not (tmp_path / "PWNED").exists()
    assert cases > 200 and built > 0  # the harmless mutations (e.g. a stray string field) still build
    assert os.listdir(tmp_path) == []
