"""The pooler-comparison plots draw the numbers they are given: each line's points, each bar's place and
height, undefined values as gaps, the seed groups' mean and sample std, and one PNG per chart.

Each chart is read back from its matplotlib figure (captured as it is saved), not from the picture.

Shape shorthand:
    M: models compared (one line or bar group each); G: bar groups (classes or sizes)
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

import detector.evaluation.plots as plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves, in order (still readable after pyplot closed it)."""
    saved = []
    original = plots._save

    def capture(fig, path):
        saved.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return saved


def _analysis(ap, per_class, by_size, tp_ious):
    return {
        "iou_thresholds": [0.5, 0.75, 0.95],
        "ap_per_iou": ap,
        "per_class": {c: {"AP": v} for c, v in per_class.items()},
        "ap_by_size": dict(zip(("small", "medium", "large"), by_size)),
        "pr_curves": {
            "0.50": {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 0.8, None]},
            "0.75": {"recall": [0.0, 0.25, 0.5], "precision": [0.9, 0.5, 0.1]},
        },
        "tp_ious": tp_ious,
        "mean_tp_iou": float(np.mean(tp_ious)),
    }


ANALYSES = {
    "roi_pool": _analysis([0.6, 0.3, 0.0], {"cat": 0.5, "dog": None, "bird": 0.25}, (0.1, 0.2, 0.3),
                          [0.51, 0.55, 0.7, 0.7, 0.99]),
    "roi_align": _analysis([0.7, 0.45, 0.05], {"cat": 0.6, "dog": 0.4, "bird": 0.35}, (None, 0.4, 0.5),
                           [0.6, 0.8, 0.81, 0.97]),
}


def _bars(ax):
    """(centre, height, width) of every bar, series after series."""
    return [(p.get_x() + p.get_width() / 2, p.get_height(), p.get_width()) for p in ax.patches]


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (math.isnan(g) and w is None) or g == pytest.approx(w), (got, want)


def test_plot_all_writes_five_pngs_and_closes_its_figures(tmp_path: Path, figures):
    before = set(plt.get_fignums())
    paths = plots.plot_all(ANALYSES, tmp_path / "new" / "folder")
    assert [p.name for p in paths] == ["ap_vs_iou.png", "per_class_ap.png", "pr_curves.png",
                                       "tp_iou_histogram.png", "ap_by_size.png"]
    assert all(p.parent == tmp_path / "new" / "folder" for p in paths)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert len(figures) == 5 and set(plt.get_fignums()) == before


def test_ap_against_iou_is_one_line_per_model(tmp_path: Path, figures):
    plots.plot_ap_vs_iou(ANALYSES, tmp_path / "a.png")
    ax = figures[0].axes[0]
    assert [line.get_label() for line in ax.lines] == list(ANALYSES)
    for line, a in zip(ax.lines, ANALYSES.values()):
        assert list(line.get_xdata()) == a["iou_thresholds"] and list(line.get_ydata()) == a["ap_per_iou"]
    assert ax.get_ylim() == (0, 1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(ANALYSES)


def test_per_class_bars_sit_side_by_side_and_undefined_ap_is_a_gap(tmp_path: Path, figures):
    plots.plot_per_class_ap(ANALYSES, tmp_path / "c.png")
    ax = figures[0].axes[0]
    width = 0.8 / 2  # two models share each class's 0.8
    want = [(g - 0.4 + width / 2, v, width) for g, v in enumerate([0.5, None, 0.25])]
    want += [(g - 0.4 + 1.5 * width, v, width) for g, v in enumerate([0.6, 0.4, 0.35])]
    got = _bars(ax)
    for (x, h, w), (wx, wh, ww) in zip(got, want, strict=True):
        assert x == pytest.approx(wx) and w == pytest.approx(ww)
        _same([h], [wh])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert list(ax.get_xticks()) == [0, 1, 2]
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())
    assert ax.get_ylim() == (0, 1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(ANALYSES)


def test_many_classes_tilt_their_labels(tmp_path: Path, figures):
    names = [f"class{i}" for i in range(7)]
    one = {"m": _analysis([0.5] * 3, dict.fromkeys(names, 0.5), (0.1, 0.2, 0.3), [0.6])}
    plots.plot_per_class_ap(one, tmp_path / "c.png")
    labels = figures[0].axes[0].get_xticklabels()
    assert all(t.get_rotation() == 30 and t.get_horizontalalignment() == "right" for t in labels)
    assert [x for x, _, w in _bars(figures[0].axes[0])] == pytest.approx(list(range(7)))  # one series: centred
    plots.plot_per_class_ap({"m": _analysis([0.5] * 3, dict.fromkeys(names[:6], 0.5), (0.1, 0.2, 0.3), [0.6])},
                            tmp_path / "d.png")
    assert all(t.get_rotation() == 0 and t.get_horizontalalignment() == "center"
               for t in figures[1].axes[0].get_xticklabels())


def test_ap_by_size_is_small_medium_large_in_that_order(tmp_path: Path, figures):
    plots.plot_ap_by_size(ANALYSES, tmp_path / "s.png")
    ax = figures[0].axes[0]
    _same([h for _, h, _ in _bars(ax)], [0.1, 0.2, 0.3, None, 0.4, 0.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["small (< 32²)", "medium", "large (> 96²)"]


def test_pr_curves_at_050_and_075(tmp_path: Path, figures):
    plots.plot_pr_curves(ANALYSES, tmp_path / "pr.png")
    axes = figures[0].axes
    assert len(axes) == 2
    for ax, iou in zip(axes, ("0.50", "0.75")):
        assert iou in ax.get_title()
        assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1.02)
        for line, a in zip(ax.lines, ANALYSES.values(), strict=True):
            assert list(line.get_xdata()) == a["pr_curves"][iou]["recall"]
            _same(list(line.get_ydata()), a["pr_curves"][iou]["precision"])
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == list(ANALYSES)


def test_tp_iou_histogram_counts_in_25_bins_from_05_to_1(tmp_path: Path, figures):
    plots.plot_tp_iou_histogram(ANALYSES, tmp_path / "h.png")
    ax = figures[0].axes[0]
    edges = 0.5 + 0.02 * np.arange(26)
    for patch, a in zip(ax.patches, ANALYSES.values(), strict=True):
        xy = patch.get_xy()  # a step outline: (edge_k, count_k), (edge_k+1, count_k) per bin
        assert xy[1:51:2, 0] == pytest.approx(edges[:-1])
        assert list(xy[1:51:2, 1]) == list(np.histogram(a["tp_ious"], bins=edges)[0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["roi_pool (mean 0.690)", "roi_align (mean 0.795)"]


SEEDS = {
    "roi_align": [
        {"iou_thresholds": [0.5, 0.75], "ap_per_iou": [0.8, None], "ap_by_size": {"small": 0.1, "medium": 0.2, "large": None}},
        {"iou_thresholds": [0.5, 0.75], "ap_per_iou": [0.6, 0.4], "ap_by_size": {"small": 0.3, "medium": 0.2, "large": None}},
    ],
    "roi_pool": [
        {"iou_thresholds": [0.5, 0.75], "ap_per_iou": [0.5, 0.2], "ap_by_size": {"small": 0.0, "medium": 0.1, "large": 0.9}},
    ],
}


def test_seed_groups_draw_the_mean_and_sample_std(tmp_path: Path, figures):
    paths = plots.plot_seed_groups(SEEDS, tmp_path / "seeds")
    assert [p.name for p in paths] == ["seeds_ap_vs_iou.png", "seeds_ap_by_size.png"]
    assert all(p.is_file() for p in paths)
    ax = figures[0].axes[0]
    align, pool = ax.containers
    assert list(align.lines[0].get_xdata()) == [0.5, 0.75]
    assert list(align.lines[0].get_ydata()) == pytest.approx([0.7, 0.4])  # the seed without a value is left out
    # the error bar at 0.5 spans mean +/- the sample std of (0.8, 0.6) = 0.1414; one value at 0.75: no std
    segment = align.lines[2][0].get_segments()[0]
    assert segment[:, 1] == pytest.approx([0.7 - math.sqrt(0.02), 0.7 + math.sqrt(0.02)])
    assert list(pool.lines[0].get_ydata()) == [0.5, 0.2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["roi_align (n=2)", "roi_pool (n=1)"]
    assert ax.get_ylim() == (0, 1)
    ax = figures[1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["small (< 32²)", "medium", "large (> 96²)"]
    assert ax.get_ylim() == (0, 1)
    _same([h for _, h, _ in _bars(ax)], [0.2, 0.2, None, 0.0, 0.1, 0.9])
    assert [x for x, _, _ in _bars(ax)] == pytest.approx([-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    assert [w for _, _, w in _bars(ax)] == pytest.approx([0.4] * 6)  # two groups side by side, not overlapping
    # each bar's error bar: mean +/- the sample std over the seeds (0.1, 0.3 -> 0.1414 for small; 0 for one seed)
    from matplotlib.container import BarContainer

    align_bars, pool_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    small = align_bars.errorbar.lines[2][0].get_segments()[0]
    assert small[:, 0] == pytest.approx([-0.2, -0.2]) and small[:, 1] == pytest.approx([0.2 - math.sqrt(0.02), 0.2 + math.sqrt(0.02)])
    assert pool_bars.errorbar.lines[2][0].get_segments()[2][:, 1] == pytest.approx([0.9, 0.9])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["roi_align (n=2)", "roi_pool (n=1)"]


def test_one_seed_group_draws_full_width_bars_on_their_ticks(tmp_path: Path, figures):
    plots.plot_seed_groups({"roi_align": SEEDS["roi_align"]}, tmp_path / "seeds")
    ax = figures[1].axes[0]
    assert [(x, w) for x, _, w in _bars(ax)] == pytest.approx([(0, 0.8), (1, 0.8), (2, 0.8)])


def test_mean_std_ignores_missing_values_and_one_run_has_zero_spread():
    mean, std = plots._mean_std([[1.0, None, 2.0], [3.0, None, 4.0]])
    assert mean[0] == 2.0 and math.isnan(mean[1]) and std[0] == pytest.approx(math.sqrt(2))
    mean, std = plots._mean_std([[1.0, 2.0]])
    assert list(mean) == [1.0, 2.0] and list(std) == [0.0, 0.0]
