"""Where the default training iteration's time goes: the loader against the step, then the step's operators.

    python -m benchmarks.step_profile [--steps 40] [--profile 8] [--threads 2] [OVERRIDES ...]   # checkout root

One process, the config ``tools/train.py OVERRIDES`` would train (the default: the embedded dataset,
generated on first use, and the width-0.125 model), the real training loader (main process, the
run's augmentation). Two copies of the model, one trained in float32 and one under bf16 autocast,
take turns on the same batches; the table gives each one's median time to fetch a batch and to run
:func:`detector.engine.step.train_step` (forward, losses, backward, SGD), and the step ratio paired
per batch. Then ``torch.profiler`` over ``--profile`` further steps of each: the operators with the
most self time, and the convolution backward and forward calls grouped by input shape (which layer a
cost belongs to). torch.profiler is used as it is: it is the tool that attributes time to operators.
Run it with no other torch process on the machine; the profiled steps run slower than unprofiled ones.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch

from detector.cli.api import compose_command
from detector.cli.train import build_datasets, build_state
from detector.data import build_training_loader
from detector.engine.distributed import init_distributed
from detector.engine.step import train_step
from detector.utils.env import resolve_device, seed_all

SHAPE_OPS = ("aten::convolution_backward", "aten::mkldnn_convolution")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per precision (after 10 warm-up steps)")
    parser.add_argument("--profile", type=int, default=8, help="profiled steps per precision (0: no profile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="train config overrides, as for tools/train.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_command("train", ["progress=false", *args.overrides])
    ddp, device = init_distributed(resolve_device(cfg.device))  # one process: no process group
    train_set, _ = build_datasets(cfg)
    models = {}
    for name, amp in (("float32", "off"), ("bf16", "bf16")):
        seed_all(int(cfg.seed))  # the same initial weights for both
        models[name] = build_state(compose_command("train", ["progress=false", *args.overrides, f"solver.amp={amp}"]),
                                   ddp, device, train_set, None)
    loader = build_training_loader(train_set, batch_size=int(cfg.solver.ims_per_batch), seed=int(cfg.seed), start=0,
                                   num_workers=0, rank=0, world_size=1)
    batches = itertools.cycle(loader)
    load = {k: [] for k in models}
    step = {k: [] for k in models}
    for i in range(10 + args.steps):
        for name, (state, amp_dtype) in models.items():
            start = time.perf_counter()
            images, targets = next(batches)
            fetched = time.perf_counter()
            train_step(state.model, images, targets, state.optimizer, iteration=i, amp_dtype=amp_dtype)
            if i >= 10:
                load[name].append(fetched - start)
                step[name].append(time.perf_counter() - fetched)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.steps} steps each, medians")
    print("| precision | fetch a batch | train_step | float32 step / this step, paired |")
    print("| --- | ---: | ---: | ---: |")
    for name in models:
        paired = statistics.median(a / b for a, b in zip(step["float32"], step[name]))
        print(f"| {name} | {statistics.median(load[name]) * 1e3:.1f} ms | {statistics.median(step[name]) * 1e3:.1f} ms "
              f"| {paired:.2f}x |")
    if args.profile <= 0:
        return
    from torch.profiler import ProfilerActivity, profile

    for name, (state, amp_dtype) in models.items():
        work = [next(batches) for _ in range(args.profile)]
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for k, (images, targets) in enumerate(work):
                train_step(state.model, images, targets, state.optimizer, iteration=1000 + k, amp_dtype=amp_dtype)
        print(f"\n{name}: the 15 operators with the most self time, ms per step")
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        for e in ops:
            print(f"  {e.key:44s} {e.self_cpu_time_total / 1e3 / args.profile:8.2f}  ({e.count} calls)")
        print(f"{name}: convolutions by input shape (images vary in size), ms per step")
        shaped = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key in SHAPE_OPS),
                        key=lambda e: -e.self_cpu_time_total)[:10]
        for e in shaped:
            print(f"  {e.key:30s} {e.self_cpu_time_total / 1e3 / args.profile:8.2f}  ({e.count} calls)  "
                  f"{[s for s in e.input_shapes if s][:3]}")


if __name__ == "__main__":
    main()
