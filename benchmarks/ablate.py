"""The ablation harness: recipe knobs, one at a time around a base recipe, over the held-out family.

    python benchmarks/ablate.py                                # every variant on the tuning part
    python benchmarks/ablate.py --part heldout --variants base,old_defaults,roi_pool
    python benchmarks/ablate.py --table                         # only rewrite the table from results

A *variant* is a list of Hydra overrides of ``tools/train.py`` (``solver.base_lr=0.02``); a *part* a
list of dataset configs (``family/photo_small``). For each variant the harness launches one Hydra
multirun of the real training entry point over the part's datasets::

    python tools/train.py -m dataset=family/a,family/b <budget> <base> <variant> \\
        output_dir=OUT/runs/<variant> hydra.sweep.subdir=${dataset.name}

so every number comes from the command a user runs (the same model builder, loader and COCO
evaluation); nothing here builds a model. Results are appended to ``OUT/results.jsonl`` as each
variant finishes, one line per (variant, dataset), and a point already there is never run again:
the harness can be killed and restarted (a half-finished training run is redone from the start).
Each row names the machine it ran on (``machine``); results from several machines may share a file,
but a table or a decision takes one row per (variant, dataset, seed): ``--machine`` picks them.
``OUT/results.md`` gets the table: per variant, the mean over the part's datasets and the
per-dataset AP, AP50, AP75, APs, and the wall time.

``--jobs 2`` runs two (variant, seed) jobs side by side, each with ``OMP_NUM_THREADS=1``: on a 2-core
machine that is as fast as one job with two threads and hides each process's start-up; the wall times
in the table are then those of one thread. Jobs go variant by variant, so one variant's seeds also
fill both cores.

The spec (``benchmarks/ablation.yaml``) names the budget, the base recipe, the parts and the
variants; see its comments. Written by hand: Hydra's basic sweeper takes cartesian products only, and
a one-knob-at-a-time grid with resumable, appended results is not a product.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = ("AP", "AP50", "AP75", "APs")
_RESULTS_LOCK = threading.Lock()  # variants finishing together append to one file


def load_spec(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    for key in ("budget", "base", "parts", "variants"):
        if key not in spec:
            raise SystemExit(f"error: {path}: missing key {key!r}")
    for name in spec.get("speed_variants") or []:
        if name not in spec["variants"]:
            raise SystemExit(f"error: {path}: speed_variants: {name!r} is not one of the variants")
    return spec


def read_results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dataset_name(dataset: str) -> str:
    return dataset.rsplit("/", 1)[-1]


def collect(out: Path, variant: str, overrides: list[str], datasets: list[str], seed: int = 0) -> list[dict]:
    """Append the finished (variant, dataset, seed) points of ``OUT/runs/<variant>`` to results.jsonl."""
    with _RESULTS_LOCK:
        return _collect(out, variant, overrides, datasets, seed)


def _collect(out: Path, variant: str, overrides: list[str], datasets: list[str], seed: int = 0) -> list[dict]:
    done = {point(r) for r in read_results(out)}
    new = []
    for dataset in datasets:
        run_dir = out / "runs" / variant / run_name(dataset, seed)
        metrics_file, timing_file = run_dir / "metrics.json", run_dir / "timing.json"
        if (variant, dataset, seed) in done or not (metrics_file.is_file() and timing_file.is_file()):
            continue
        metrics = json.loads(metrics_file.read_text())
        timing = json.loads(timing_file.read_text())
        new.append({
            "variant": variant, "dataset": dataset, "seed": seed, "overrides": overrides,
            **{k: metrics.get(k) for k in METRICS}, "wall_s": timing["total_seconds"],
            "machine": machine(), "run_dir": str(run_dir),
        })  # fmt: skip
    if new:
        with open(out / "results.jsonl", "a", encoding="utf-8") as f:
            for row in new:
                f.write(json.dumps(row) + "\n")
    return new


def machine() -> str:
    """The machine the jobs run on, in words: the CUDA device when there is one (training takes it),
    else the CPU with its core count and bf16 instructions ("2-core AMD EPYC, AVX512-BF16")."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    caps = torch.cpu.get_capabilities()
    bf16 = [name for key, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if caps.get(key)]
    return ", ".join([f"{os.cpu_count()}-core {caps.get('cpu_name') or 'CPU'}", *bf16[:1]])


def select_machine(rows: list[dict], name: str) -> list[dict]:
    """The rows whose ``machine`` contains ``name`` (case-insensitive); rows that name none are kept
    only when ``name`` is empty."""
    return [r for r in rows if name.lower() in (r.get("machine") or "").lower()] if name else rows


def check_points(rows: list[dict]) -> None:
    """Refuse rows that hold one (variant, dataset, seed) more than once: averaging them would count a
    seed twice and shrink its spread (the same point run on two machines is two experiments)."""
    seen: dict[tuple[str, str, int], list[str]] = {}
    for r in rows:
        seen.setdefault(point(r), []).append(r.get("machine") or "unnamed machine")
    repeated = [(key, where) for key, where in seen.items() if len(where) > 1]
    if repeated:
        (variant, dataset, seed), where = repeated[0]
        raise ValueError(
            f"{variant} / {dataset_name(dataset)} seed {seed} is in the results {len(where)} times (machines: "
            f"{', '.join(where)}) and {len(repeated) - 1} more point(s) repeat; choose one machine's rows "
            f"(--machine NAME)"
        )


def point(row: dict) -> tuple[str, str, int]:
    """A result's key; rows written before seeds were recorded are seed 0."""
    return row["variant"], row["dataset"], int(row.get("seed", 0))


def run_name(dataset: str, seed: int) -> str:
    return dataset_name(dataset) + (f"_seed{seed}" if seed else "")


def prepare_datasets(datasets: list[str], overrides: list[str]) -> None:
    """Draw the part's generated datasets once, before jobs that would draw them side by side."""
    from hydra import compose, initialize_config_dir
    from detector.cli.config import register_resolvers
    from detector.cli.train import build_datasets  # building a generated split draws it, once

    register_resolvers()  # the configs' ${repo_root:} and ${scaled_lr:...}, as the tools register them
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        for dataset in datasets:
            build_datasets(compose("train", overrides=[f"dataset={dataset}", *overrides]))


def run_point(out: Path, spec: dict, variant: str, datasets: list[str], threads: int | None, log, seed: int) -> None:
    """One job: ``variant`` with ``seed`` on each of ``datasets`` not yet in the results."""
    _run_seed(out, spec, variant, list(spec["variants"][variant] or []), datasets, threads, log, seed)


def job_env(threads: int | None) -> dict[str, str]:
    """The environment of a job: this process's, with the thread count, and the package of the tree this
    harness lives in first on the path. A job then runs this tree's code and configs even where another
    checkout is installed in editable mode, so edits there cannot change a grid that is running."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run_seed(out, spec, variant, overrides, datasets, threads, log, seed: int) -> None:
    # A run that finished after its harness was killed counts: its directory holds the results.
    collect(out, variant, overrides, datasets, seed)
    done = {point(r) for r in read_results(out)}
    todo = [d for d in datasets if (variant, d, seed) not in done]
    if not todo:
        return
    subdir = "${dataset.name}" + (f"_seed{seed}" if seed else "")
    # overwrite=true: a run folder already there for a point without a result is a run that never
    # finished (a finished one was collected above), stopped after writing a checkpoint or its final
    # model; without it train.py would refuse the folder and end the whole multirun.
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "train.py"), "-m", f"dataset={','.join(todo)}",
        *spec["budget"], *(spec["base"] or []), *overrides, f"seed={seed}",
        f"output_dir={out / 'runs' / variant}", f"hydra.sweep.subdir={subdir}", "overwrite=true",
    ]  # fmt: skip
    env = job_env(threads)
    log(f"[{time.strftime('%H:%M:%S')}] start {variant} seed {seed} on {', '.join(map(dataset_name, todo))}")
    new = []
    log_name = f"{variant}.log" if not seed else f"{variant}_seed{seed}.log"  # one file per job
    with open(out / "logs" / log_name, "a", encoding="utf-8") as f:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        while True:  # append each dataset's point as soon as its run has finished
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                new += collect(out, variant, overrides, todo, seed)
    new += collect(out, variant, overrides, todo, seed)
    status = "done" if proc.returncode == 0 else f"exit {proc.returncode} (see logs/{log_name})"
    summary = ", ".join(f"{dataset_name(r['dataset'])} AP {r['AP']:.3f}" for r in new)
    log(f"[{time.strftime('%H:%M:%S')}] {status} {variant} seed {seed}: {summary}")


def aggregate(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(variant, dataset) -> the mean and sample standard deviation of each metric over its seeds, with ``n``.

    ``<metric>_std`` is None for one seed; ``AP_by_seed`` keeps the seeds' APs for paired differences.
    A point that appears twice is refused (:func:`check_points`).
    """
    check_points(rows)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["dataset"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        agg = {"variant": key[0], "dataset": key[1], "n": len(rs), "overrides": rs[0]["overrides"],
               "wall_s": _mean([r["wall_s"] for r in rs])}  # fmt: skip
        for m in METRICS:
            values = [r[m] for r in rs if r[m] is not None]
            agg[m] = _mean(values)
            agg[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else None
        agg["AP_by_seed"] = {r.get("seed", 0): r["AP"] for r in rs if r["AP"] is not None}
        out[key] = agg
    return out


def decide(rows: list[dict], *, variant: str, tuning: list[str], heldout: list[str], base: str = "base",
           metric: str = "AP", purpose: str = "accuracy") -> dict:
    """The decision rule, fixed before the runs: does ``variant`` replace the default (``base``)?

    Per dataset, over its seeds: the gain ``mean(variant) - mean(base)`` and the pooled standard
    deviation ``sqrt((s_variant^2 + s_base^2) / 2)`` (sample deviations; at least 2 seeds each).

    ``purpose="accuracy"`` (a knob meant to raise AP): adopted only when its mean gain over the tuning
    datasets exceeds their mean pooled deviation, and on no held-out dataset it loses more than that
    dataset's pooled deviation. ``purpose="speed"`` (a knob meant to cost less at the same AP, listed
    under ``speed_variants`` in the spec; its speed is measured elsewhere): adopted only when on no
    dataset of either part it loses more than that dataset's pooled deviation.
    """
    if purpose not in ("accuracy", "speed"):
        raise ValueError(f"purpose must be 'accuracy' or 'speed', got {purpose!r}")
    check_points(rows)

    def values(v: str, d: str) -> list[float]:
        return [r[metric] for r in rows if r["variant"] == v and r["dataset"] == d and r.get(metric) is not None]

    per = {}
    for d in [*tuning, *heldout]:
        a, b = values(variant, d), values(base, d)
        if len(a) < 2 or len(b) < 2:
            return {"adopt": False, "decided": False, "per_dataset": per,
                    "reason": f"{dataset_name(d)}: needs at least 2 seeds of {variant} and {base}"}
        gain = statistics.mean(a) - statistics.mean(b)
        per[d] = {"gain": gain, "pooled_std": math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)}
    if purpose == "speed":
        losing = [d for d in [*tuning, *heldout] if per[d]["gain"] < -per[d]["pooled_std"]]
        reason = (f"speed knob: loses beyond its spread on {', '.join(dataset_name(d) for d in losing)}" if losing
                  else "speed knob: no dataset of either part loses beyond its spread")
        return {"adopt": not losing, "decided": True, "reason": reason, "per_dataset": per}
    gain = statistics.mean(per[d]["gain"] for d in tuning)
    noise = statistics.mean(per[d]["pooled_std"] for d in tuning)
    losing = [d for d in heldout if per[d]["gain"] < -per[d]["pooled_std"]]
    if gain <= noise:
        reason = f"tuning: mean gain {100 * gain:+.1f} does not exceed the pooled std {100 * noise:.1f}"
    elif losing:
        reason = f"held-out: loses beyond its spread on {', '.join(dataset_name(d) for d in losing)}"
    else:
        reason = f"tuning: mean gain {100 * gain:+.1f} > pooled std {100 * noise:.1f}; no held-out loss beyond its spread"
    return {"adopt": gain > noise and not losing, "decided": True, "reason": reason, "per_dataset": per}


def _ap_cell(c: dict | None) -> str:
    if c is None:
        return "…"
    if c["AP_std"] is None:
        return _fmt(c["AP"])
    return f"{_fmt(c['AP'])} ± {_fmt(c['AP_std'])}"


def _gap_cell(a: dict | None, b: dict | None) -> str:
    """``a - b`` in AP points; over the seeds both have, the mean ± std of the per-seed differences."""
    if a is None or b is None or a["AP"] is None or b["AP"] is None:
        return "…"
    common = sorted(set(a["AP_by_seed"]) & set(b["AP_by_seed"]))
    if len(common) < 2:
        return f"{100 * (a['AP'] - b['AP']):+.1f}"
    from detector.evaluation.seeds import paired_comparison  # the evaluator's own paired statistics

    r = paired_comparison([b["AP_by_seed"][s] for s in common], [a["AP_by_seed"][s] for s in common])
    return f"{100 * r['mean_diff']:+.1f} ± {100 * r['std_diff']:.1f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def make_table(rows: list[dict], part: str, datasets: list[str], variants: list[str]) -> str:
    """Markdown: per variant the mean over ``datasets`` (only when all are done) and per-dataset AP.

    Several seeds of a point are averaged first; a dataset's AP is then ``mean ± std`` (sample
    standard deviation over the seeds).
    """
    by = aggregate(rows)
    names = [dataset_name(d) for d in datasets]
    header = ["variant", *(f"mean {m}" for m in METRICS), *(f"{n} AP" for n in names), "wall s", "overrides"]
    lines = [f"### {part}: {', '.join(names)}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    for variant in variants:
        cells = [by.get((variant, d)) for d in datasets]
        if not any(cells):
            continue
        complete = all(cells)
        # A metric undefined on a dataset (APs without small objects) is averaged over the others.
        means = [_mean([c[m] for c in cells if c[m] is not None]) if complete else None for m in METRICS]
        wall = [c["wall_s"] for c in cells if c]
        overrides = next(c for c in cells if c)["overrides"]
        lines.append("| " + " | ".join([
            variant, *map(_fmt, means), *map(_ap_cell, cells),
            f"{sum(wall) / len(wall):.0f}", " ".join(f"`{o}`" for o in overrides) or "(base)",
        ]) + " |")  # fmt: skip
    lines += ["", "AP..APs in %, COCO (pycocotools) on each dataset's val split; mean over the part's "
              "datasets (shown once every dataset is done; APs over those with small objects); wall s: mean seconds per run (model "
              "building, training and the final evaluation; not the process start-up)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def goals_table(rows: list[dict], part: str, datasets: list[str]) -> str:
    """Per dataset: the defaults (``base``) against the best variant found, the old defaults and RoIPool.

    Written only for a part that has ``base`` results; "best" is the highest AP of any variant on that
    dataset (``base`` included), so ``base / best >= 0.9`` is the "within 10 %" goal of the README.
    """
    by = aggregate(rows)
    if not any(("base", d) in by for d in datasets):
        return ""
    lines = [f"### {part}: the base recipe against the best variant, the old defaults and RoIPool", "",
             "| dataset | base AP | best AP (variant) | base / best | old defaults AP | RoIPool AP | RoIAlign - RoIPool |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for d in datasets:
        base = by.get(("base", d))
        if base is None or base["AP"] is None:
            continue
        scored = [r for r in by.values() if r["dataset"] == d and r["AP"] is not None and r["variant"] != "roi_pool"]
        best = max(scored, key=lambda r: r["AP"])
        old, pool = by.get(("old_defaults", d)), by.get(("roi_pool", d))
        ratio = f"{base['AP'] / best['AP']:.2f}" if best["AP"] > 0 else "—"
        gap = _gap_cell(base, pool)
        lines.append(f"| {dataset_name(d)} | {_ap_cell(base)} | {_fmt(best['AP'])} ({best['variant']}) | {ratio} | "
                     f"{_ap_cell(old)} | {_ap_cell(pool)} | {gap} |")
    return "\n".join(lines) + "\n\n"


def decision_table(rows: list[dict], spec: dict) -> str:
    """Per variant, the decision rule's verdict against ``base`` (README "Defaults"), once it can be taken.

    Needs a spec with ``tuning`` and ``heldout`` parts; a variant without 2 seeds of itself and of
    ``base`` on every dataset of both parts is left out (its row would only say so).
    """
    parts = spec["parts"]
    if "tuning" not in parts or "heldout" not in parts:
        return ""
    lines = []
    for variant in spec["variants"]:
        if variant == "base":
            continue
        purpose = "speed" if variant in spec.get("speed_variants", []) else "accuracy"
        r = decide(rows, variant=variant, tuning=list(parts["tuning"]), heldout=list(parts["heldout"]), purpose=purpose)
        if not r["decided"]:
            continue
        gains = ", ".join(f"{dataset_name(d)} {100 * g['gain']:+.1f} (±{100 * g['pooled_std']:.1f})"
                          for d, g in r["per_dataset"].items())
        lines.append(f"| {variant} | {'adopt' if r['adopt'] else 'keep base'} | {r['reason']} | {gains} |")
    if not lines:
        return ""
    return "\n".join([
        "### The decision rule: each variant against base", "",
        "| variant | verdict | why | AP gain per dataset (pooled std), points |", "|---|---|---|---|", *lines, "",
    ]) + "\n"


def write_tables(out: Path, spec: dict, machine_name: str = "") -> str:
    rows = select_machine(read_results(out), machine_name)
    try:
        check_points(rows)
    except ValueError as e:
        raise SystemExit(f"error: {out / 'results.jsonl'}: {e}") from None
    text = "".join(
        make_table(rows, part, datasets, list(spec["variants"])) + "\n" + goals_table(rows, part, datasets)
        for part, datasets in spec["parts"].items()
    ) + decision_table(rows, spec)
    (out / "results.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "benchmarks" / "ablation.yaml")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "ablation")
    parser.add_argument("--part", default="tuning", help="a key of the spec's parts")
    parser.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--datasets", default="", help="comma-separated subset of the part's datasets")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each point runs once per seed")
    parser.add_argument("--jobs", type=int, default=1, help="(variant, seed) jobs run side by side (1 thread each if > 1)")
    parser.add_argument("--table", action="store_true", help="only rewrite results.md from results.jsonl")
    parser.add_argument("--machine", default="", help="tables from the rows of the machines whose name contains this")
    args = parser.parse_args(argv)

    spec = load_spec(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    if not args.table:
        if args.part not in spec["parts"]:
            raise SystemExit(f"error: --part {args.part!r}: the spec's parts are {', '.join(spec['parts'])}")
        variants = list(dict.fromkeys(v for v in args.variants.split(",") if v)) or list(spec["variants"])
        unknown = [v for v in variants if v not in spec["variants"]]
        if unknown:
            raise SystemExit(f"error: --variants: {unknown[0]!r} is not in {args.spec}")
        datasets = list(spec["parts"][args.part])
        if args.datasets:
            subset = [d for d in args.datasets.split(",") if d]
            outside = [d for d in subset if d not in datasets]
            if outside:
                raise SystemExit(f"error: --datasets: {outside[0]!r} is not in part {args.part!r}")
            datasets = subset
        threads = 1 if args.jobs > 1 else None
        prepare_datasets(datasets, [*spec["budget"], *(spec["base"] or [])])

        def log(message: str) -> None:
            print(message, flush=True)
            with open(args.out / "ablation.log", "a", encoding="utf-8") as f:
                f.write(message + "\n")

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            seeds = tuple(dict.fromkeys(int(x) for x in args.seeds.split(",") if x))  # each seed once
            jobs = [(v, seed) for v in variants for seed in seeds]
            futures = [pool.submit(run_point, args.out, spec, v, datasets, threads, log, seed) for v, seed in jobs]
            for future in futures:
                future.result()
    print(write_tables(args.out, spec, args.machine), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
