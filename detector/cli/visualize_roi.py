"""Draw the seed's figures for any image size, stride, RoI and output size (writes a PNG).

    python tools/visualize_roi.py                      # the seed's example, from its CSV
    python tools/visualize_roi.py --image-size 640 480 --stride 16 --roi 100 80 150 90 --output-size 7

Left: the feature-map grid over the image, the RoI, and RoIPool's quantized region under the seed's
"floor" rule: cells pooled although outside the RoI (origin error: "adding portion of the father"),
and parts of the RoI that no pooled cell covers (origin shift and the cropped remainder: "missing
portion of the boy"), shaded differently. Middle: RoIAlign's bins and sampling points, each labelled
with its bilinear value. Right: the k x k outputs of both operators side by side.

With no --csv, the seed's feature map is used when the grid is the seed's 25 x 18; otherwise a seeded
random map stands in (the geometry, which is the point of the figure, does not depend on it).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from detector.ops import roi_align, roi_align_samples, roi_pool, sample_points  # noqa: E402
from detector.ops.roi_pool import floor_quantize  # noqa: E402

SEED_CSV = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed" / "feature_map_18x25.csv"  # the transcription


def load_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [H, W] with hidden cells as 0, hidden mask [H, W])."""
    try:
        rows = list(csv.reader(path.open()))
        values = [[float(v) if v.strip() else math.nan for v in row] for row in rows]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read feature map {path}: {e}") from None
    fm = torch.tensor(values, dtype=torch.float64)
    hidden = torch.isnan(fm)
    return torch.nan_to_num(fm, nan=0.0), hidden


def draw(args: argparse.Namespace) -> Path:
    img_w, img_h = args.image_size
    s = args.stride
    fw, fh = img_w // s, img_h // s
    x, y, w, h = args.roi
    k, n = args.output_size, args.sampling_ratio

    csv_path = args.csv or (SEED_CSV if (fw, fh) == (25, 18) and SEED_CSV.is_file() else None)
    if csv_path is not None:
        fm, hidden = load_csv(Path(csv_path))
        if fm.shape != (fh, fw):
            raise SystemExit(f"error: {csv_path} is {fm.shape[0]} x {fm.shape[1]} cells, the grid is {fh} x {fw}")
    else:
        fm = torch.rand(fh, fw, generator=torch.Generator().manual_seed(0), dtype=torch.float64).round(decimals=1)
        hidden = torch.zeros_like(fm, dtype=torch.bool)

    box = torch.tensor([[0.0, x, y, x + w, y + h]], dtype=torch.float64)
    inp = fm[None, None]
    pool = roi_pool(inp, box, k, 1 / s, quantization="floor")[0, 0]
    align = roi_align(inp, box, k, 1 / s, n, True, reduction=args.reduction, sample_layout=args.layout)[0, 0]
    samples = roi_align_samples(inp, box, k, 1 / s, n, True, sample_layout=args.layout)[0, 0]
    xs, ys = sample_points((x, y, x + w, y + h), k, 1 / s, n, True, sample_layout=args.layout)
    _, qx, qy, bw, bh = floor_quantize(box, (k, k), 1 / s)[0].tolist()

    fig, axes = plt.subplots(1, 4, figsize=(22, 7), gridspec_kw={"width_ratios": [3, 3, 1.2, 1.2]})
    for ax, title in zip(axes[:2], ("RoIPool (floor): quantized region", f"RoIAlign: {k}x{k} bins, {n}x{n} points ({args.layout})")):
        # Zoom on the RoI with a margin of a few cells: the figure is about those cells.
        x0v, x1v = max(0, math.floor(x / s) - 3), min(fw, math.ceil((x + w) / s) + 3)
        y0v, y1v = max(0, math.floor(y / s) - 3), min(fh, math.ceil((y + h) / s) + 3)
        ax.set_xlim(x0v, x1v)
        ax.set_ylim(y1v, y0v)
        ax.set_aspect("equal")
        ax.set_xticks(range(x0v, x1v + 1, max(1, (x1v - x0v) // 25)))
        ax.set_yticks(range(y0v, y1v + 1, max(1, (y1v - y0v) // 18)))
        ax.grid(True, color="0.8", linewidth=0.6)
        ax.set_title(title)
        ax.set_xlabel(f"feature cells (1 cell = {s} x {s} px of the {img_w} x {img_h} image)")
        for (r, c) in torch.nonzero(hidden).tolist():
            ax.add_patch(Rectangle((c, r), 1, 1, color="0.85"))
        roi_f = (x / s, y / s, w / s, h / s)
        ax.add_patch(Rectangle(roi_f[:2], roi_f[2], roi_f[3], fill=False, edgecolor="tab:blue", linewidth=2.5,
                               label=f"RoI ({x:g}, {y:g}, {w:g}, {h:g}) / {s}"))
        if (x1v - x0v) <= 40 and (y1v - y0v) <= 30:
            for r in range(y0v, y1v):
                for c in range(x0v, x1v):
                    if not hidden[r, c]:
                        ax.text(c + 0.5, r + 0.5, f"{fm[r, c]:.1f}", ha="center", va="center", fontsize=8, color="0.45")

    # Left: RoIPool's pooled cells against the RoI, cell by cell.
    ax = axes[0]
    px0, py0, px1, py1 = qx, qy, qx + k * bw, qy + k * bh
    rx0, ry0, rx1, ry1 = x / s, y / s, (x + w) / s, (y + h) / s
    for r in range(fh):
        for c in range(fw):
            in_pool = px0 <= c < px1 and py0 <= r < py1
            # Overlap of cell (r, c) with the RoI, as a fraction of the cell.
            ox = max(0.0, min(c + 1, rx1) - max(c, rx0))
            oy = max(0.0, min(r + 1, ry1) - max(r, ry0))
            if in_pool and ox * oy < 1.0:
                ax.add_patch(Rectangle((c, r), 1, 1, color="tab:red", alpha=0.25 * (1 - ox * oy) + 0.05))
            elif not in_pool and ox * oy > 0:
                ax.add_patch(Rectangle((max(c, rx0), max(r, ry0)), ox, oy, color="tab:orange", alpha=0.45))
    ax.add_patch(Rectangle((px0, py0), px1 - px0, py1 - py0, fill=False, edgecolor="tab:red", linewidth=2.5,
                           label=f"pooled: X {rx0:.3f}->{qx:g}, Y {ry0:.3f}->{qy:g}, bins {bw:g} x {bh:g} cells"))
    for i in range(1, k):
        ax.plot([px0 + i * bw] * 2, [py0, py1], color="tab:red", linewidth=1)
        ax.plot([px0, px1], [py0 + i * bh] * 2, color="tab:red", linewidth=1)
    ax.add_patch(Rectangle((0, 0), 0, 0, color="tab:red", alpha=0.3, label="pooled but outside the RoI (origin error)"))
    ax.add_patch(Rectangle((0, 0), 0, 0, color="tab:orange", alpha=0.45, label="RoI not pooled (shift + cropped remainder)"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=1)

    # Middle: RoIAlign's bins and points, each with its bilinear value.
    ax = axes[1]
    for i in range(1, k):
        ax.plot([rx0 + i * (rx1 - rx0) / k] * 2, [ry0, ry1], color="tab:blue", linewidth=1)
        ax.plot([rx0, rx1], [ry0 + i * (ry1 - ry0) / k] * 2, color="tab:blue", linewidth=1)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    first = f"X = {', '.join(f'{v:.2f}' for v in xs[:n])}; Y = {', '.join(f'{v:.2f}' for v in ys[:n])}"
    ax.scatter(gx.reshape(-1), gy.reshape(-1), s=18, color="tab:green", zorder=3,
               label=f"sampling points with their bilinear values (bin (0, 0): {first})")
    if k * n <= 12:
        for r in range(k * n):
            for c in range(k * n):
                ax.annotate(f"{samples[r, c]:.3f}", (xs[c], ys[r]), fontsize=7,
                            xytext=(2, 2), textcoords="offset points", color="darkgreen", weight="bold")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=1)

    for ax, values, title in ((axes[2], pool, "RoIPool (floor)"), (axes[3], align, f"RoIAlign ({args.reduction})")):
        ax.imshow(values, cmap="viridis", vmin=float(fm.min()), vmax=float(fm.max()))
        ax.set_title(f"{title}\n{k} x {k} output")
        ax.set_xticks([])
        ax.set_yticks([])
        if k <= 7:
            for r in range(k):
                for c in range(k):
                    ax.text(c, r, f"{values[r, c]:.3f}", ha="center", va="center", color="white", fontsize=9)
    fig.suptitle(y=1.02, t=f"{img_w} x {img_h} image, stride {s} -> {fw} x {fh} feature map; "
                           f"RoI x, y = ({x:g}, {y:g}), w, h = ({w:g}, {h:g})")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, nargs=2, default=(800, 576), metavar=("W", "H"))
    p.add_argument("--stride", type=int, default=32, help="feature-map stride (32 = 5 max-pools)")
    p.add_argument("--roi", type=float, nargs=4, default=(300, 210, 230, 180), metavar=("X", "Y", "W", "H"))
    p.add_argument("--output-size", type=int, default=3, help="k for a k x k output")
    p.add_argument("--sampling-ratio", type=int, default=2, help="n for n x n RoIAlign points per bin")
    p.add_argument("--layout", choices=["interior", "centered"], default="interior")
    p.add_argument("--reduction", choices=["max", "avg"], default="max")
    p.add_argument("--csv", type=Path, default=None, help="feature map values (rows of comma-separated numbers)")
    p.add_argument("--out", default="docs/seed_example.png")
    p.add_argument("--dpi", type=int, default=110)
    args = p.parse_args()
    if args.stride <= 0 or args.output_size <= 0 or args.sampling_ratio <= 0:
        raise SystemExit("error: --stride, --output-size and --sampling-ratio must be positive")
    print(f"wrote {draw(args)}")


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    main()


if __name__ == "__main__":
    run()
