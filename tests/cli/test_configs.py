"""Every config composes, and every model config instantiates into a working model."""

import itertools

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_config

CONFIGS = ROOT / "configs"
POOLERS = sorted(p.stem for p in (CONFIGS / "model" / "pooler").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml")) + sorted(
    f"family/{p.stem}" for p in (CONFIGS / "dataset" / "family").glob("*.yaml") if not p.stem.startswith("_")
)
SOLVERS = sorted(p.stem for p in (CONFIGS / "solver").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def test_groups_are_not_empty():
    assert {"roi_pool", "roi_align"} <= set(POOLERS)
    assert {"synthetic", "coco_json"} <= set(DATASETS)


@pytest.mark.parametrize("model,pooler", list(itertools.product(MODELS, POOLERS)))
def test_model_configs_instantiate_and_run(model, pooler):
    from detector.cli.config import build_model

    cfg = compose_config("train", [f"model={model}", f"model/pooler={pooler}", "model.backbone.width=0.0625"])
    assert cfg.model.pooler._target_.endswith({"roi_pool": "RoIPool", "roi_align": "RoIAlign", "roi_warp": "RoIWarp"}[pooler])
    net = build_model(cfg.model, class_names=['a', 'b', 'c', 'd']).eval()
    assert net.roi_heads.pooler.spatial_scale == pytest.approx(1 / cfg.model.backbone.stride)
    # Fast R-CNN (no RPN) takes its proposals from outside, in original-image pixels.
    proposals = None if net.rpn is not None else [torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 120.0, 100.0]])]
    with torch.no_grad():
        out = net([torch.rand(3, 100, 120)], proposals=proposals)
    assert set(out[0]) == {"boxes", "labels", "scores"}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_train_config_resolves(dataset, solver, tmp_path):
    overrides = [f"dataset={dataset}", f"solver={solver}"]
    if dataset == "coco_json":
        overrides += [f"dataset.{s}.{f}={tmp_path}/{s}_{f}" for s in ("train", "val") for f in ("images", "annotations")]
    if dataset == "yolo":
        overrides.append(f"dataset.data={tmp_path}/data.yaml")
    cfg = compose_config("train", overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["solver"]["max_iter"] > 0
    from detector.cli.config import validate_train_config

    validate_train_config(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment):
    cfg = compose_config("train", [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_eval_config_composes():
    cfg = compose_config("eval", ["checkpoints=[a.pth,b.pth]"])
    assert list(cfg.checkpoints) == ["a.pth", "b.pth"]
    assert cfg.get("dataset") is None
    cfg = compose_config("eval", ["checkpoints=[a.pth]", "dataset=synthetic"])
    assert cfg.dataset.val.split == "val" and cfg.dataset.val._target_.endswith("generated_split")


def test_cli_contract_keys_exist():
    # The names of the documented command line keep working as written.
    cfg = compose_config("train", [
        "dataset=coco_json", "dataset.train.images=D", "dataset.train.annotations=F",
        "dataset.val.images=D", "dataset.val.annotations=F", "model/pooler=roi_align",
        "solver.max_iter=3", "solver.ims_per_batch=2", "solver.base_lr=0.01", "output_dir=O",
        "device=cpu", "seed=3",
    ])
    assert (cfg.solver.max_iter, cfg.solver.ims_per_batch, cfg.solver.base_lr, cfg.seed) == (3, 2, 0.01, 3)


def test_only_the_config_layer_imports_hydra():
    """Hydra and omegaconf stay in detector/cli; the framework never sees a config object."""
    cli = ROOT / "detector" / "cli"
    for path in (ROOT / "detector").rglob("*.py"):
        if cli in path.parents:
            continue
        text = path.read_text()
        assert "import hydra" not in text and "from hydra" not in text, path
        assert "import omegaconf" not in text and "from omegaconf" not in text, path


def test_derived_values_come_from_the_built_parts_not_the_config():
    """One value, one place: K from the data, channels, stride, anchors per cell from built parts."""
    from detector.cli.config import build_model

    cfg = compose_config("train", [
        "model.backbone.stride=16", "model.backbone.width=0.0625",
        "model.rpn.anchor_generator.aspect_ratios=[1.0]", "model/pooler=roi_pool", "model.pooler.output_size=5",
    ])
    net = build_model(cfg.model, class_names=["a", "b", "c"])
    assert net.roi_heads.pooler.spatial_scale == 1 / 16 and net.rpn.anchor_generator.stride == 16
    assert net.rpn.head.objectness_logits.out_channels == 5  # 5 sizes x 1 ratio
    assert net.rpn.head.conv.in_channels == net.backbone.out_channels == 32
    assert net.roi_heads.box_head.layers[1].in_features == 32 * 5 * 5
    assert net.roi_heads.predictor.cls_score.out_features == 4  # 3 classes + background
    text = (ROOT / "configs" / "model" / "faster_rcnn_vgg16.yaml").read_text()
    for copy in ("num_classes:", "in_channels:", "num_anchors:", "spatial_scale:", "pooled_size:", "in_features:"):
        assert not any(line.strip().startswith(copy) for line in text.splitlines()), copy


def test_library_errors_come_back_naming_the_config_key():
    from detector.cli.config import build_model
    from detector.errors import ConfigError

    cfg = compose_config("train", ["model.backbone.freeze_at=9", "model.backbone.width=0.0625"])
    with pytest.raises(ConfigError, match=r"^model\.backbone: freeze_at must be in 0\.\.5"):
        build_model(cfg.model, class_names=["a"])


@pytest.mark.parametrize("overrides", [
    ["model/pooler=roi_pool", "model.pooler.quantization=floor"],
    ["model/pooler=roi_align", "model.pooler.reduction=max", "model.pooler.sample_layout=interior",
     "model.pooler.sampling_ratio=-1", "model.pooler.aligned=false"],
    ["model/pooler=roi_warp", "model.pooler.reduction=max"],
])
def test_every_operator_variant_through_config(overrides):
    from detector.cli.config import build_model

    cfg = compose_config("train", overrides + ["model.backbone.width=0.0625"])
    net = build_model(cfg.model, class_names=['a', 'b'])
    for o in overrides[1:]:
        key, value = o.split("=")
        attr = getattr(net.roi_heads.pooler, key.split(".")[-1])
        assert str(attr).lower() == value
    losses = net.train()([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_base_lr_follows_batch_and_width_through_the_config():
    from detector.engine import scaled_lr

    s = compose_config("train").solver

    def lr(*overrides):  # at the reference batch unless an override names one
        if not any(o.startswith("solver.ims_per_batch=") for o in overrides):
            overrides = (f"solver.ims_per_batch={s.reference_batch}", *overrides)
        return compose_config("train", list(overrides)).solver.base_lr

    ref = lr()
    assert ref == pytest.approx(s.reference_lr)  # the reference recipe: batch 4 at the default width
    # The default batch (2) is below the reference: the default lr is half the reference's.
    assert (s.ims_per_batch, s.base_lr) == (2, pytest.approx(ref / 2))
    assert lr("solver.ims_per_batch=2") == pytest.approx(ref / 2)  # linear scaling below the reference
    # Above it the batch term is capped (a larger batch keeps the reference's lr); the cap is a knob.
    assert s.max_batch_factor == 1.0
    assert lr("solver.ims_per_batch=8") == pytest.approx(ref)
    assert lr("solver.ims_per_batch=8", "solver.max_batch_factor=4") == pytest.approx(2 * ref)
    # null: no cap (or no floor), as in configs stored before the caps existed.
    assert lr("solver.ims_per_batch=8", "solver.max_batch_factor=null") == pytest.approx(2 * ref)
    assert lr("model.backbone.width=0.0625", "solver.max_width_factor=null") == pytest.approx(2 * ref)
    assert lr("model.backbone.width=0.5", "solver.min_width_factor=null") == pytest.approx(ref / 4)
    assert lr("solver.ims_per_batch=8", "model.backbone.width=0.25") == pytest.approx(scaled_lr(
        reference_lr=s.reference_lr, ims_per_batch=8, reference_batch=s.reference_batch, width=0.25,
        reference_width=s.reference_width, width_exponent=s.width_exponent, max_batch_factor=1.0,
    ))  # fmt: skip
    assert lr("solver.width_exponent=1.0", "model.backbone.width=0.25") == pytest.approx(
        ref * s.reference_width / 0.25)
    assert lr("solver.base_lr=0.5") == 0.5  # an explicit lr wins
    # A narrower backbone than the reference keeps the reference's lr (the cap); the cap is a knob.
    assert s.max_width_factor == 1.0
    assert lr("model.backbone.width=0.0625") == pytest.approx(ref)
    assert lr("model.backbone.width=0.0625", "solver.max_width_factor=4") == pytest.approx(ref * 2 ** s.width_exponent)
    # The width term of the defaults: lr ~ 1 / width down to a floor of half the reference's (measured at
    # widths 0.25 and 0.5, sgd.yaml): 0.02 at width 0.25 and at every wider backbone.
    assert s.min_width_factor == 0.5
    assert lr("model.backbone.width=0.25") == pytest.approx(ref / 2)
    assert lr("model.backbone.width=0.5") == pytest.approx(ref / 2)
    assert lr("model.backbone.width=1.0") == pytest.approx(ref / 2)
    assert lr("model.backbone.width=0.5", "solver.ims_per_batch=2") == pytest.approx(ref / 4)  # the batch term below it
    # The floor is a knob: 0 removes it (1 / width at every width).
    assert lr("model.backbone.width=0.5", "solver.min_width_factor=0") == pytest.approx(ref / 4)
    assert lr("model.backbone.width=1.0", "solver.min_width_factor=0") == pytest.approx(ref * 0.125)


def test_bad_lr_rule_input_is_one_line_naming_the_key():
    from detector.cli.config import validate_train_config
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"solver.reference_batch must be >= 1, got 0"):
        validate_train_config(compose_config("train", ["solver.reference_batch=0"]))
    with pytest.raises(ConfigError, match=r"solver.max_width_factor must be > 0, got -1"):
        validate_train_config(compose_config("train", ["solver.max_width_factor=-1"]))
    with pytest.raises(ConfigError, match=r"solver.max_batch_factor must be > 0, got 0"):
        validate_train_config(compose_config("train", ["solver.max_batch_factor=0"]))
    with pytest.raises(ConfigError, match=r"solver.min_width_factor must be >= 0, got -0.5"):
        validate_train_config(compose_config("train", ["solver.min_width_factor=-0.5"]))
    with pytest.raises(ConfigError, match=r"solver.backbone_lr_factor must be > 0, got 0"):
        validate_train_config(compose_config("train", ["solver.backbone_lr_factor=0"]))


def test_step_milestones_follow_max_iter():
    assert list(compose_config("train").solver.steps) == [2400]  # 80 % of the default 3000
    assert list(compose_config("train", ["solver.max_iter=400"]).solver.steps) == [320]
    assert list(compose_config("train", ["solver.step_fractions=[0.5,0.75]", "solver.max_iter=100"]).solver.steps) == [50, 75]
    assert list(compose_config("train", ["solver.steps=[7]"]).solver.steps) == [7]


def test_the_comparison_names_every_pooler():
    from omegaconf import OmegaConf

    from detector.cli.eval import describe_pooler

    names = {}
    for pooler in POOLERS:
        cfg = compose_config("train", [f"model/pooler={pooler}"])
        names[pooler] = describe_pooler(OmegaConf.to_container(cfg.model, resolve=True))
    assert names == {"roi_align": "RoIAlign(s32, sr2, aligned)", "roi_pool": "RoIPool(s32)", "roi_warp": "RoIWarp(s32, sr2)"}


def test_the_pooler_alone_experiment_sweeps_poolers_and_seeds_on_fast_rcnn():
    from hydra import compose, initialize_config_dir

    from detector.cli.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=pool_vs_align_fixed", "dataset.train.proposals=a.pt",
                                                      "dataset.val.proposals=b.pt"], return_hydra_config=True)
    assert cfg.model.get("rpn") is None  # Fast R-CNN: the proposals come from the files, the same for all
    params = cfg.hydra.sweeper.params
    assert params["model/pooler"] == "roi_pool,roi_warp,roi_align" and params["seed"] == "0,1,2"


def test_num_workers_auto_loads_in_the_main_process_on_a_small_cpu(monkeypatch):
    import detector.cli.config as config
    from detector.cli.config import loader_workers, validate_train_config
    from detector.errors import ConfigError

    assert compose_config("train").num_workers == "auto" and compose_config("eval").num_workers == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for cores, on_cpu in ((1, 0), (2, 0), (3, 1), (16, 1)):
        monkeypatch.setattr(config, "available_cores", lambda cores=cores: cores)
        workers, why = loader_workers("auto", cpu)
        assert workers == on_cpu and f"{cores} CPU cores" in why
        assert loader_workers("auto", cuda)[0] == 1  # a GPU's host work is not the model's
    assert loader_workers(3, cpu) == (3, "num_workers=3")  # a number is taken as given
    assert loader_workers(0, cuda)[0] == 0
    for bad in (-1, "many", True, 1.5):
        with pytest.raises(ConfigError, match=rf"num_workers must be auto or an integer >= 0, got {bad!r}"):
            loader_workers(bad, cpu)
    with pytest.raises(ConfigError, match=r"num_workers must be auto or an integer >= 0, got -1"):
        validate_train_config(compose_config("train", ["num_workers=-1"]))
    assert config.available_cores() >= 1


def test_aspect_ratio_grouping_is_on_by_default_and_a_boolean():
    from detector.cli.config import validate_train_config
    from detector.errors import ConfigError

    assert compose_config("train").aspect_ratio_grouping is True
    validate_train_config(compose_config("train", ["aspect_ratio_grouping=false"]))
    with pytest.raises(ConfigError, match="aspect_ratio_grouping must be true or false, got 'sometimes'"):
        validate_train_config(compose_config("train", ["aspect_ratio_grouping=sometimes"]))
