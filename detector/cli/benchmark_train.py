"""``tools/benchmark.py train``: our training step against torchvision's ``FasterRCNN``, same model.

    python tools/benchmark.py train                          # width 0.25, 320 px, batch 4, 512 RoIs
    python tools/benchmark.py train --rounds 12 --device cuda --amp bf16

Both detectors are built from one config (``configs/train.yaml`` + overrides): ours with
``detector.cli.config.build_model``; torchvision's ``FasterRCNN`` around a copy of *our* backbone
module (VGG16-BN, same width, stride 32, same weights), with torchvision's ``AnchorGenerator``
(same sizes and aspect ratios), ``RPNHead``, ``TwoMLPHead`` and ``FastRCNNPredictor`` of the same
sizes, and the same image size, RPN top-k / NMS / sampling, RoIs per image and IoU thresholds, all
read from that config. Its pooler calls ``torchvision.ops.roi_align`` (aligned, sampling ratio 2,
like ours) or ``torchvision.ops.roi_pool`` on the one stride-32 map (``MultiScaleRoIAlign`` would
force ``aligned=False``). Both train on the same images of the embedded dataset, preloaded, with SGD.

Timing: the four detectors (ours / torchvision x RoIAlign / RoIPool) take turns, one training step
each per round, so that a noisy neighbour slows them alike; images/s is the median over rounds,
and each ratio is the median of the per-round ratios (moments apart). Inference likewise (eval
mode, no grad). Peak memory: on the CPU each detector trains a few steps in a fresh process that polls its resident
set size (peak RSS while training, data and model included); on CUDA, ``max_memory_allocated``.

``--split``: where our training step's time goes. The step is re-run stage by stage with the graph
cut between stages (each stage's input detached), so that each stage's backward is timed on its
own: backbone, RPN (head, anchors, proposals, losses), RoI sampling (matching, sampling, targets),
pooler, box head (+ predictor and losses), optimizer. The backbone alone (forward + backward) is the
limit a two-stage detector can approach.
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detector.cli.config import CONFIG_DIR, build_model, instantiate_or_explain, register_resolvers  # noqa: E402
from detector.modeling.roi_heads.roi_heads import fast_rcnn_losses  # noqa: E402

POOLERS = ("roi_align", "roi_pool")
FRAMEWORKS = ("ours", "torchvision")


def benchmark_config(*, width: float, size: int, rois: int, rpn_topk: tuple[int, int], pooler: str, extra=()):
    """The one config both detectors are built from (width 0.25, 320 px, batch 4, 512 RoIs per image by default)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()  # the YAML's ${repo_root:} etc.; ``python tools/benchmark.py train`` composes here
    overrides = [
        f"model/pooler={pooler}", f"model.backbone.width={width}", f"model.transform.min_size={size}",
        f"model.transform.max_size={size}", f"model.roi_heads.sampler.batch_size_per_image={rois}",
        "model.transform.test_scale=1.0",  # torchvision tests at its training size: the same pixels for both
        f"model.rpn.pre_nms_topk_train={rpn_topk[0]}", f"model.rpn.post_nms_topk_train={rpn_topk[1]}", *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class _TorchvisionPooler(MultiScaleRoIAlign):
    """torchvision's op on the single feature map (``box_roi_pool`` of its ``RoIHeads``).

    A ``MultiScaleRoIAlign`` only because ``FasterRCNN`` insists on that type; its forward is
    replaced by the plain op with our pooler's settings (one map, stride known, aligned as ours).
    """

    def __init__(self, ours: nn.Module) -> None:
        super().__init__(["0"], ours.output_size, getattr(ours, "sampling_ratio", 2))
        self.ours = ours  # read its settings only

    def forward(self, features, proposals, image_shapes):
        x, p = features["0"], self.ours
        if not hasattr(p, "sampling_ratio"):  # our RoIPool
            # torchvision's roi_pool has no bf16 CPU kernel and, unlike its roi_align, no autocast
            # wrapper: run it in float32 under autocast, as its roi_align's wrapper does.
            if x.dtype == torch.bfloat16 and x.device.type == "cpu":
                x, proposals = x.float(), [b.float() for b in proposals]
            return torchvision.ops.roi_pool(x, proposals, p.output_size, p.spatial_scale)
        return torchvision.ops.roi_align(x, proposals, p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned)


def build_pair(cfg, class_names) -> tuple[nn.Module, nn.Module]:
    """Ours from the config, and torchvision's ``FasterRCNN`` with the same parts and settings."""
    ours = build_model(cfg.model, class_names=class_names)
    m, rpn, heads = cfg.model, cfg.model.rpn, cfg.model.roi_heads
    anchors = AnchorGenerator(sizes=(tuple(rpn.anchor_generator.sizes),), aspect_ratios=(tuple(rpn.anchor_generator.aspect_ratios),))
    channels, k = ours.backbone.out_channels, ours.roi_heads.pooler.output_size
    box_head = TwoMLPHead(channels * k[0] * k[1], ours.roi_heads.box_head.out_features)
    theirs = TorchvisionFasterRCNN(
        copy.deepcopy(ours.backbone),  # the same module and weights (it has .out_channels)
        min_size=m.transform.min_size, max_size=m.transform.max_size,
        image_mean=list(m.transform.pixel_mean), image_std=list(m.transform.pixel_std),
        rpn_anchor_generator=anchors, rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train, rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=rpn.post_nms_topk_train, rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.matcher.high_threshold,
        rpn_bg_iou_thresh=rpn.matcher.low_threshold, rpn_batch_size_per_image=rpn.sampler.batch_size_per_image,
        rpn_positive_fraction=rpn.sampler.positive_fraction,
        box_roi_pool=_TorchvisionPooler(ours.roi_heads.pooler), box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.fc7.out_features, len(class_names) + 1),
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img, box_fg_iou_thresh=heads.matcher.high_threshold,
        box_bg_iou_thresh=heads.matcher.low_threshold, box_batch_size_per_image=heads.sampler.batch_size_per_image,
        box_positive_fraction=heads.sampler.positive_fraction, bbox_reg_weights=tuple(heads.box_coder.weights),
    )
    return ours, theirs


def load_batches(cfg, batch: int, count: int, device) -> tuple[list, list[str]]:
    """``count`` batches of the embedded training split, preloaded (no data loading is timed)."""
    dataset = instantiate_or_explain(cfg.dataset.train, what="dataset.train", transforms=None, skip_empty=True)
    batches = []
    for b in range(count):
        items = [dataset[(b * batch + i) % len(dataset)] for i in range(batch)]
        images = [img.to(device) for img, _ in items]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for _, t in items]
        batches.append((images, targets))
    return batches, list(dataset.class_names)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_step_fn(model: nn.Module, device, amp: str) -> Callable[[list, list], float]:
    """One SGD step (forward, sum of losses, backward, step); returns its wall time."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step(images, targets) -> float:
        model.train()
        _sync(device)
        t = time.perf_counter()
        with _autocast(device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync(device)
        return time.perf_counter() - t

    return step


def infer_fn(model: nn.Module, device, amp: str) -> Callable[[list, list], float]:
    def infer(images, targets) -> float:
        model.eval()
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad(), _autocast(device, amp):
            model(images)
        _sync(device)
        return time.perf_counter() - t

    return infer


def interleaved(fns: dict[str, Callable], batches: list, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Run every fn once per round on the same batch; returns each fn's times (warm-up dropped)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        images, targets = batches[r % len(batches)]
        for name, fn in fns.items():
            dt = fn(images, targets)
            if r >= warmup:
                times[name].append(dt)
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow / fast (higher: ``fast`` is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def peak_memory_cpu(args, framework: str, pooler: str) -> float:
    """Peak RSS (MiB) of a fresh process that builds one detector and trains ``3`` steps."""
    cmd = [sys.executable, "-m", "detector.cli.benchmark", "train", "--memory-of", f"{framework}:{pooler}",
           "--width", str(args.width), "--size", str(args.size), "--batch", str(args.batch), "--rois", str(args.rois),
           "--rpn-topk", str(args.rpn_topk[0]), str(args.rpn_topk[1]), "--amp", args.amp,
           *(f"--override={o}" for o in args.override)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def memory_of(args, spec: str) -> None:
    """``--memory-of ours:roi_align``: build, train 3 steps, print the peak RSS as JSON (a child process)."""
    framework, pooler = spec.split(":")
    device = torch.device("cpu")
    cfg = benchmark_config(width=args.width, size=args.size, rois=args.rois, rpn_topk=tuple(args.rpn_topk),
                           pooler=pooler, extra=args.override)
    batches, names = load_batches(cfg, args.batch, 3, device)
    torch.manual_seed(0)
    ours, theirs = build_pair(cfg, names)
    model = ours if framework == "ours" else theirs
    del ours, theirs
    step = train_step_fn(model, device, args.amp)
    step(*batches[0])  # the first step allocates the optimizer's state and warms the allocator
    with _RSSPeak() as peak:
        for images, targets in batches:
            step(images, targets)
    print(json.dumps({"peak_rss_mib": peak.peak / 2**20}))


class _RSSPeak:
    """The largest resident set size seen while the block runs (polled every millisecond).

    ``ru_maxrss`` would report the process's lifetime peak, which loading the dataset can set.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = resource.getpagesize()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "_RSSPeak":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def run_train_benchmark(args) -> str:
    device = torch.device(args.device)
    rounds, warmup = args.rounds, 2
    models, fns_train, fns_infer, mem = {}, {}, {}, {}
    batches = names = None
    for pooler in POOLERS:
        cfg = benchmark_config(width=args.width, size=args.size, rois=args.rois, rpn_topk=tuple(args.rpn_topk),
                               pooler=pooler, extra=args.override)
        if batches is None:  # the same images for every detector
            batches, names = load_batches(cfg, args.batch, 4, device)
        torch.manual_seed(0)
        ours, theirs = build_pair(cfg, names)
        for framework, model in zip(FRAMEWORKS, (ours, theirs)):
            model.to(device)
            models[framework, pooler] = model
            fns_train[f"{framework} {pooler}"] = train_step_fn(model, device, args.amp)
            fns_infer[f"{framework} {pooler}"] = infer_fn(model, device, args.amp)
    train = interleaved(fns_train, batches, rounds, warmup)
    infer = interleaved(fns_infer, batches, rounds, warmup)
    for framework, pooler in models:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step = train_step_fn(models[framework, pooler], device, args.amp)
            for images, targets in batches[:3]:
                step(images, targets)
            mem[framework, pooler] = torch.cuda.max_memory_allocated(device) / 2**20
        elif not args.no_memory:
            mem[framework, pooler] = peak_memory_cpu(args, framework, pooler)

    n = args.batch
    lines = [
        _header(device, args),
        f"{'detector':<24} {'train img/s':>12} {'infer img/s':>12} {'peak MiB':>9}",
    ]
    for framework, pooler in models:
        name = f"{framework} {pooler}"
        m = f"{mem[framework, pooler]:9.0f}" if (framework, pooler) in mem else f"{'-':>9}"
        lines.append(f"{name:<24} {n / statistics.median(train[name]):12.2f} {n / statistics.median(infer[name]):12.2f} {m}")
    lines.append("ours vs torchvision (paired medians; > 1: ours is faster / smaller):")
    for pooler in POOLERS:
        o, t = f"ours {pooler}", f"torchvision {pooler}"
        line = f"  {pooler:<10} train {paired_ratio(train[t], train[o]):5.2f}x  inference {paired_ratio(infer[t], infer[o]):5.2f}x"
        if ("ours", pooler) in mem:
            line += f"  peak memory {mem['torchvision', pooler] / mem['ours', pooler]:5.2f}x less"
        lines.append(line)
    lines.append(f"ours roi_pool vs ours roi_align, train: {paired_ratio(train['ours roi_align'], train['ours roi_pool']):.2f}x")
    if args.split:
        lines.append("")
        lines.append(step_split_report(models["ours", "roi_align"], models["ours", "roi_pool"], batches, device, rounds, warmup))
    return "\n".join(lines)


def _header(device, args) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return (
        f"device: {device} ({where}), torch {torch.__version__}, torchvision {torchvision.__version__}, amp {args.amp}\n"
        f"setting: VGG16-BN width {args.width}, stride 32, {args.size} px, batch {args.batch}, {args.rois} RoIs/image, "
        f"RPN top-k {args.rpn_topk[0]}/{args.rpn_topk[1]} (train), {args.rounds} rounds"
    )


# ---- where the time of our training step goes ----------------------------------------------------


def staged_step(model: nn.Module, images, targets) -> dict[str, float]:
    """Our training step, stage by stage, the graph cut between stages; returns seconds per stage.

    The wiring is FasterRCNN.forward's (transform, backbone, RPN, RoI heads), spelled out so that
    each stage's forward and backward are timed alone: a stage reads a detached copy of its input,
    and the gradient reaching that copy is handed on to the stage before it.
    """
    model.train()
    heads = model.roi_heads
    clock: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
        return out

    image_list, targets = timed("transform", lambda: model.transform(images, targets))
    features = timed("backbone", lambda: model.backbone(image_list.tensors))
    feats = features.detach().requires_grad_(True)
    proposals, rpn_losses = timed("rpn", lambda: model.rpn(feats, image_list.image_sizes, targets))
    sampled, gt_classes, regression = timed("roi sampling", lambda: heads.label_and_sample_proposals(proposals, targets))
    pooled = timed("pooler", lambda: heads.pooler(feats, sampled))
    pooled_in = pooled.detach().requires_grad_(True)

    def head():
        logits, deltas = heads.predictor(heads.box_head(pooled_in))
        return fast_rcnn_losses(logits, deltas, gt_classes, regression, smooth_l1_beta=heads.smooth_l1_beta)

    head_losses = timed("box head", head)
    model.zero_grad(set_to_none=True)
    timed("box head", lambda: sum(head_losses.values()).backward())
    timed("pooler", lambda: pooled.backward(pooled_in.grad))
    timed("rpn", lambda: sum(rpn_losses.values()).backward())
    timed("backbone", lambda: features.backward(feats.grad))
    return clock


def backbone_only(model: nn.Module, images, targets) -> float:
    """The limit: the backbone's forward + backward on the same batch (a unit gradient)."""
    model.train()
    image_list, _ = model.transform(images, targets)
    t = time.perf_counter()
    features = model.backbone(image_list.tensors)
    features.backward(torch.ones_like(features))
    return time.perf_counter() - t


def step_split_report(align_model, pool_model, batches, device, rounds: int, warmup: int) -> str:
    if device.type == "cuda":
        return "(--split runs on the CPU only: CUDA kernels are asynchronous)"
    stages = ("transform", "backbone", "rpn", "roi sampling", "pooler", "box head")
    results = {}
    for name, model in (("roi_align", align_model), ("roi_pool", pool_model)):
        per: dict[str, list[float]] = {s: [] for s in stages}
        whole, limit = [], []
        step = train_step_fn(model, device, "off")
        for r in range(warmup + rounds):
            images, targets = batches[r % len(batches)]
            clock = staged_step(model, images, targets)
            w, lim = step(images, targets), backbone_only(model, images, targets)
            if r >= warmup:
                for s in stages:
                    per[s].append(clock.get(s, 0.0))
                whole.append(w)
                limit.append(lim)
        results[name] = ({s: statistics.median(v) for s, v in per.items()}, statistics.median(whole), statistics.median(limit))
    lines = ["our training step, stage by stage (forward + backward, median ms; graph cut between stages):",
             f"{'stage':<14} {'roi_align':>10} {'roi_pool':>10}"]
    for s in stages:
        lines.append(f"{s:<14} {results['roi_align'][0][s] * 1e3:10.1f} {results['roi_pool'][0][s] * 1e3:10.1f}")
    for label, i in (("whole step", 1), ("backbone only", 2)):
        lines.append(f"{label:<14} {results['roi_align'][i] * 1e3:10.1f} {results['roi_pool'][i] * 1e3:10.1f}")
    lines.append(
        "whole step / backbone-only f+b (the limit): "
        + ", ".join(f"{n} {results[n][1] / results[n][2]:.2f}x" for n in ("roi_align", "roi_pool"))
    )
    return "\n".join(lines)
