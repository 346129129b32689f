"""Mixed precision (solver.amp): autocast training, the fp16 GradScaler, its checkpoint, the RoI ops."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import compose_config, tiny_model
from detector.engine import AMP_DTYPES, load_checkpoint, train_step
from detector.errors import ConfigError
from detector.ops import RoIAlign, RoIPool
from detector.ops.roi_align import roi_align_samples
from test_exact_resume import _train, assert_same_state
from test_faults import Flaky, _loop

DTYPES = [torch.bfloat16, torch.float16]


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 150, generator=g), torch.rand(3, 100, 130, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 10.0, 120.0, 70.0], [5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([2, 3])},
    ]
    return images, targets


@pytest.mark.parametrize("pooler", ["roi_align", "roi_pool"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_a_few_autocast_steps_train_in_float32_weights(dtype, pooler):
    torch.manual_seed(0)
    model = tiny_model(overrides=[f"model/pooler={pooler}"]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    images, targets = _batch()
    for it in range(3):
        values, applied = train_step(model, images, targets, optimizer, iteration=it, clip_grad_norm=10.0,
                                     amp_dtype=dtype, scaler=scaler)
        assert applied and all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it did learn something

    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        detections = model(images)
    # Boxes come from the float32 box coder, scores from a float32 softmax: both float32.
    assert detections[0]["boxes"].dtype == detections[0]["scores"].dtype == torch.float32


def test_unscale_happens_before_clipping(monkeypatch):
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    model = Flaky(bad=set())  # loss = w, gradient 1
    _loop(model, 1, clip_grad_norm=0.5, amp_dtype=torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert seen == [pytest.approx(1.0)]  # the true gradient, not 65536
    assert model.w.item() == pytest.approx(1 - 0.1 * 0.5)  # clipped to 0.5 in true units, then lr 0.1


class Steep(torch.nn.Module):
    """loss = 4 w: at a scale of 2**127 the scaled gradient (2**129) overflows float32."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, targets):
        return {"loss_roi_cls": 4.0 * self.w}


def test_an_fp16_overflow_is_the_scalers_skip_not_a_nonfinite_skip(caplog):
    model, scaler = Steep(), torch.amp.GradScaler("cpu", init_scale=2.0**127)
    with caplog.at_level("DEBUG", logger="detector.engine.step"):
        # Two overflows (2**127, 2**126) then a step at 2**125; max_nonfinite_skips=0 would stop on one skip.
        _loop(model, 3, amp_dtype=torch.float16, scaler=scaler, max_nonfinite_skips=0, nonfinite="skip")
    assert scaler.get_scale() == 2.0**125
    assert model.w.item() == pytest.approx(1 - 0.1 * 4)  # one update applied
    assert sum("GradScaler skipped the update" in r.getMessage() for r in caplog.records) == 2
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_fp16_checkpoint_holds_the_scaler_and_resume_is_exact(tmp_path):
    run = ["solver.max_iter=4", "checkpoint_period=2", "solver.amp=fp16"]
    full = _train(tmp_path, tmp_path / "full", run)
    middle = load_checkpoint(tmp_path / "full" / "model_0000002.pth")  # weights_only=True
    assert set(middle["grad_scaler"]) >= {"scale", "_growth_tracker"}
    assert isinstance(middle["grad_scaler"]["scale"], float)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000002.pth", part / "model_0000002.pth")
    (part / "last_checkpoint").write_text("model_0000002.pth\n")
    steps = []
    resumed = _train(tmp_path, part, [*run, "resume=true"], steps=steps)
    assert steps == [2, 3]  # resumed, not restarted
    assert resumed["grad_scaler"] == full["grad_scaler"]
    assert_same_state(full, resumed)

    # The scale comes from the checkpoint, not a fresh scaler: one more step keeps it or halves it.
    edited = tmp_path / "edited"
    edited.mkdir()
    middle["grad_scaler"]["scale"] = 1024.0
    torch.save(middle, edited / "model_0000002.pth")
    (edited / "last_checkpoint").write_text("model_0000002.pth\n")
    after = _train(tmp_path, edited, ["solver.max_iter=3", "solver.amp=fp16", "resume=true"])
    assert after["grad_scaler"]["scale"] in (1024.0, 512.0)


@pytest.mark.parametrize("value", ["fp32", "true", "0"])
def test_an_invalid_amp_value_is_one_line(tmp_path, value):
    from detector.cli import train

    cfg = compose_config("train", [f"solver.amp={value}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^solver\.amp must be auto, off, bf16 or fp16, got ") as err:
        train.train(cfg)
    assert "\n" not in str(err.value)


def test_off_and_false_are_off():
    from detector.cli.config import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype(compose_config("train", ["solver.amp=off"]), cpu) is None
    assert amp_dtype(compose_config("train", ["solver.amp=false"]), cpu) is None  # what an unquoted YAML off reads as
    assert amp_dtype(compose_config("train", ["solver.amp=bf16"]), cpu) is torch.bfloat16
    assert set(AMP_DTYPES) == {"off", "bf16", "fp16"}


@pytest.mark.parametrize("caps, expected", [
    ({"amx_bf16": True, "avx512_bf16": True, "cpu_name": "Xeon"}, torch.bfloat16),
    ({"amx_bf16": False, "avx512_bf16": True, "cpu_name": "Zen 4"}, torch.bfloat16),
    ({"amx_bf16": False, "avx512_bf16": False, "cpu_name": "Zen 3"}, None),
    ({}, None),  # a CPU PyTorch reports nothing for
])
def test_auto_is_the_default_and_follows_the_cpus_bf16_capability(monkeypatch, caplog, caps, expected):
    """The capability is faked: auto must choose bf16 exactly where the CPU has AMX-BF16 or AVX512-BF16."""
    import logging

    from detector.cli.config import amp_dtype

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))
    cfg = compose_config("train")
    assert cfg.solver.amp == "auto"
    with caplog.at_level(logging.INFO, logger="detector"):
        assert amp_dtype(cfg, torch.device("cpu")) is expected
    lines = [r for r in caplog.records if r.message.startswith("solver.amp=auto")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert ("bf16 autocast" if expected else "float32") in lines[0].message


def test_auto_on_cuda_follows_is_bf16_supported(monkeypatch):
    from detector.engine.step import resolve_amp

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    for supported, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, supported=supported, **k: supported)
        assert resolve_amp("auto", torch.device("cuda")).dtype is expected


def test_bf16_without_hardware_and_fp16_on_cpu_warn_in_one_line(monkeypatch, caplog):
    import logging

    from detector.cli.config import amp_dtype

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "Zen 3"})
    for value, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="detector"):
            assert amp_dtype(compose_config("train", [f"solver.amp={value}"]), torch.device("cpu")) is dtype
        warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "\n" not in warned[0] and f"solver.amp={value}" in warned[0]
    assert "emulated" in resolve_line("bf16") and "meant for CUDA" in resolve_line("fp16")


def resolve_line(mode):
    from detector.engine.step import resolve_amp

    return resolve_amp(mode, torch.device("cpu")).reason


# A box far from the origin: bfloat16 would store x1=777.3 as 776 (its spacing is 4 above 512).
BOXES = [torch.tensor([[777.3, 100.7, 900.1, 200.9], [10.2, 30.6, 300.9, 250.3]])]


def _map(dtype):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 64, 256, generator=g).to(dtype)  # at spatial_scale 1/4: 1024 x 256 pixels


def test_roi_align_under_bf16_autocast_keeps_float32_geometry():
    x = _map(torch.bfloat16)
    args = dict(output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        samples = roi_align_samples(x, BOXES, **args)
        pooled = RoIAlign(**args)(x, BOXES)
    # The same sample positions as float32 on the same values: only the bf16 rounding of the result.
    reference = roi_align_samples(x.float(), BOXES, **args)
    torch.testing.assert_close(samples.float(), reference, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(pooled.float(), RoIAlign(**args)(x.float(), BOXES), atol=3e-2, rtol=1e-2)
    # A box rounded to bf16 samples elsewhere: far outside that tolerance.
    rounded = roi_align_samples(x.float(), [BOXES[0].bfloat16().float()], **args)
    assert (rounded[0] - reference[0]).abs().max() > 0.3


@pytest.mark.parametrize("pooler", [
    RoIPool(output_size=7, spatial_scale=0.25),
    RoIPool(output_size=7, spatial_scale=0.25, quantization="floor"),
    RoIAlign(output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True),
], ids=["roi_pool", "roi_pool_floor", "roi_align"])
def test_the_heads_pool_a_bf16_map_as_float32_would_up_to_bf16_rounding(pooler):
    heads = tiny_model().roi_heads
    heads.pooler = pooler
    x = _map(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = heads.pool(x, BOXES)
    assert pooled.dtype == torch.bfloat16
    # The bf16 map is pooled directly (no float32 copy): RoIPool's max is exact in bf16; RoIAlign's
    # weighted sums round their weights to bf16, within two bf16 roundings of the largest output of
    # float32 pooling rounded once (the tolerance of detector.ops.sparse_map).
    reference = pooler(x.float(), BOXES)
    if isinstance(pooler, RoIPool):
        torch.testing.assert_close(pooled, reference.bfloat16(), atol=0, rtol=0)
    else:
        assert (pooled.float() - reference).abs().max() <= 2 * 2**-8 * reference.abs().max()


def test_fast_rcnn_proposals_reach_the_pooler_unrounded(monkeypatch):
    model = tiny_model(overrides=["model=fast_rcnn_vgg16"]).eval()
    seen = []
    pool = model.roi_heads.pool
    monkeypatch.setattr(model.roi_heads, "pool", lambda features, proposals: seen.append(proposals) or pool(features, proposals))
    image, proposals = torch.rand(3, 128, 1000), [BOXES[0][:1]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model([image], proposals=proposals)
    h, w = model.transform.target_size(128, 1000)
    expected = proposals[0] * torch.tensor([w / 1000, h / 128, w / 1000, h / 128])
    assert seen[0][0].dtype == torch.float32 and detections[0]["boxes"].dtype == torch.float32
    torch.testing.assert_close(seen[0][0], expected)  # bf16 would have moved x1 by over a pixel


def test_evaluation_follows_the_checkpoints_precision_unless_told():
    """amp=null (eval and infer's default): the checkpoint's own solver.amp, by training's rule, so the
    defaults reproduce its training's evaluation; an explicit amp wins; a bad value is one line."""
    from detector.cli.config import checkpoint_amp_dtype

    cpu = torch.device("cpu")
    assert checkpoint_amp_dtype(None, {"solver": {"amp": "off"}}, cpu) is None
    assert checkpoint_amp_dtype(None, {"solver": {"amp": False}}, cpu) is None
    assert checkpoint_amp_dtype(None, {"solver": {"amp": "bf16"}}, cpu) is torch.bfloat16
    assert checkpoint_amp_dtype(None, {"solver": {}}, cpu) is None  # trained before solver.amp existed: float32
    assert checkpoint_amp_dtype(None, {}, cpu) is None
    assert checkpoint_amp_dtype("bf16", {"solver": {"amp": "off"}}, cpu) is torch.bfloat16
    assert checkpoint_amp_dtype("off", {"solver": {"amp": "bf16"}}, cpu) is None
    with pytest.raises(ConfigError, match=r"^amp must be auto, off, bf16 or fp16, got 'fast'$"):
        checkpoint_amp_dtype("fast", {}, cpu)
    with pytest.raises(ConfigError, match=r"^the checkpoint's solver\.amp must be auto, off, bf16 or fp16"):
        checkpoint_amp_dtype(None, {"solver": {"amp": "__import__('os')"}}, cpu)


def test_every_amp_choice_and_its_line_with_the_capability_faked(monkeypatch):
    import detector.utils.env as env
    from detector.engine.step import resolve_amp

    cpu = torch.device("cpu")
    monkeypatch.setattr(env, "fast_bf16", lambda device: (True, "AVX512-BF16"))
    assert resolve_amp("auto", cpu) == (torch.bfloat16, "solver.amp=auto: bf16 autocast on cpu (AVX512-BF16); "
                                                        "solver.amp=off forces float32", False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, "solver.amp=bf16: bf16 autocast on cpu", False)
    assert resolve_amp("off", cpu) == (None, "solver.amp=off: float32", False)
    assert resolve_amp("auto", cpu, key="amp").reason.startswith("amp=auto: bf16")  # evaluation's setting
    monkeypatch.setattr(env, "fast_bf16", lambda device: (False, "no AMX or AVX512-BF16"))
    assert resolve_amp("auto", cpu) == (None, "solver.amp=auto: float32 on cpu (no AMX or AVX512-BF16)", False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, "solver.amp=bf16: no AMX or AVX512-BF16; it runs, but "
                                                        "solver.amp=off (float32) is faster here", True)
    assert resolve_amp("fp16", cpu) == (torch.float16, "solver.amp=fp16 on the CPU: float16 autocast with a GradScaler, as "
                                                       "on CUDA; CPU float16 kernels are slow, it is meant for CUDA (auto, "
                                                       "bf16 or off are the CPU's choices)", True)
    for choice in (resolve_amp(m, cpu) for m in ("auto", "off")):
        assert choice.warn is False
    with pytest.raises(ValueError, match=r"^solver\.amp must be one of auto, off, bf16, fp16, got 'fast'$"):
        resolve_amp("fast", cpu)
