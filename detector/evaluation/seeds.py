"""Runs that differ only in their seed: mean and spread per metric, and paired comparisons of poolers.

Shape shorthand:
    S: seeds (runs) in a group; P: pairs of runs with the same seed in two groups

One training run per pooler cannot tell a pooler's effect from the seed's: the same config moved by
several AP between seeds on the held-out family. So :func:`seed_groups` puts together the runs whose
stored configs are equal once the keys that do not change the experiment are removed (the seed, the
output folder, logging and resume settings), and reports each metric's mean and sample standard
deviation (``ddof=1``) over the group. :func:`paired_comparison` compares two groups that differ in
the pooler alone, pairing runs by seed (the seed fixes the initial weights, the sample order and the
augmentation, so a pair differs by the pooler only): the mean of the per-seed differences, their
standard deviation, the paired t statistic, and a 95 % percentile **bootstrap** interval of the mean
difference (10 000 resamples of the pairs, a fixed generator: the same files give the same
interval). With few seeds the interval is wide; it says so rather than a p-value.

Written here because it is a few lines of arithmetic over the evaluator's rows, which no library
holds in this shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["RUN_ONLY_KEYS", "experiment_key", "mean_std", "paired_comparison", "pooler_pairs", "seed_groups"]

# Keys of a training config that say how a run was executed, not what was trained.
RUN_ONLY_KEYS = frozenset({
    "seed", "output_dir", "resume", "overwrite", "progress", "num_workers", "device", "log_period",
    "checkpoint_period", "checkpoint_keep_last", "eval_period", "hydra",
})


def experiment_key(config: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> str:
    """The config as a canonical string, without :data:`RUN_ONLY_KEYS` and the ``ignore`` paths (dotted)."""
    c = {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}
    c = json.loads(json.dumps(c, default=str))  # plain JSON values (paths as strings); sorted once, below
    for path in ignore:
        *parents, leaf = path.split(".")
        node: Any = c
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(c, sort_keys=True)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN where there are too few)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def seed_groups(
    runs: Sequence[Mapping[str, Any]], *, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Groups of at least two runs with equal configs but their seeds.

    Args:
        runs: dicts with ``config`` (the stored training config), ``seed``, ``label`` and the metrics.

    Returns:
        Per group: ``label``, ``members`` (run indices), ``seeds``, and per metric ``{"mean", "std", "n"}``.
    """
    by_key: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        by_key.setdefault(experiment_key(run["config"]), []).append(i)
    groups = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        seeds = [runs[i]["seed"] for i in members]
        group: dict[str, Any] = {"label": runs[members[0]]["label"], "members": members, "seeds": seeds}
        for m in metrics:
            values = [runs[i].get(m) for i in members]
            mean, std = mean_std(values)
            group[m] = {"mean": mean, "std": std, "n": sum(1 for v in values if v is not None and math.isfinite(v))}
        groups.append(group)
    return groups


def paired_comparison(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """``b - a`` over pairs (same seed): mean, std, paired t, 95 % bootstrap interval of the mean.

    Args:
        a, b: the metric of the same seeds under two settings, in the same order (P values each).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need the same, non-zero length; got {len(a)} and {len(b)}")
    diffs = torch.tensor([float(y) - float(x) for x, y in zip(a, b)], dtype=torch.float64)
    n = diffs.numel()
    mean = float(diffs.mean())
    std = float(diffs.std(correction=1)) if n > 1 else math.nan
    t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else math.nan
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (resamples, n), generator=g)
    means = diffs[picks].mean(dim=1).sort().values
    lo, hi = float(means[int(0.025 * (resamples - 1))]), float(means[int(0.975 * (resamples - 1))])
    return {"n": n, "mean_diff": mean, "std_diff": std, "t": t, "ci95_low": lo, "ci95_high": hi}


def pooler_pairs(
    runs: Sequence[Mapping[str, Any]], groups: Sequence[Mapping[str, Any]], *, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Every two seed groups whose configs differ in ``model.pooler`` alone, compared on their common seeds."""
    pairs = []
    for i, ga in enumerate(groups):
        for gb in groups[i + 1:]:
            ra, rb = runs[ga["members"][0]], runs[gb["members"][0]]
            if experiment_key(ra["config"], ignore=["model.pooler"]) != experiment_key(rb["config"], ignore=["model.pooler"]):
                continue
            by_seed_a = {runs[m]["seed"]: runs[m] for m in ga["members"]}
            by_seed_b = {runs[m]["seed"]: runs[m] for m in gb["members"]}
            seeds = sorted(set(by_seed_a) & set(by_seed_b), key=str)
            if not seeds:
                continue
            pair: dict[str, Any] = {"a": ga["label"], "b": gb["label"], "seeds": seeds}
            for m in metrics:
                a = [by_seed_a[s].get(m) for s in seeds]
                b = [by_seed_b[s].get(m) for s in seeds]
                if all(v is not None and math.isfinite(v) for v in (*a, *b)):
                    pair[m] = paired_comparison(a, b)
            pairs.append(pair)
    return pairs
