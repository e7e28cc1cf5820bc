"""The scale-sweep chart: a Pillow line chart (no matplotlib), one line per curve, x = the scale s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hubguard.errors import ProtectionError
from hubguard.utils.files import atomic_write


def plot_sweep(
    curves: Mapping[str, Sequence[tuple[float, float]]], *, out: str | Path, title: str = "scale sweep",
    y_label: str = "metric", reference: float | None = None,
) -> Path:
    """A Pillow line chart (no matplotlib needed): one line per curve, x = scale s, optional dashed reference."""
    from PIL import Image, ImageDraw

    if not curves or not any(curves.values()):
        raise ProtectionError("Nothing to plot: the sweep has no points.")
    width, height, pad = 720, 440, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    xs = [x for pts in curves.values() for x, _ in pts]
    ys = [y for pts in curves.values() for _, y in pts] + ([reference] if reference is not None else [])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x0) / (x1 - x0) * (width - 2 * pad), height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad))

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for i in range(5):
        yv = y0 + i * (y1 - y0) / 4
        xv = x0 + i * (x1 - x0) / 4
        draw.text((5, px(x0, yv)[1] - 6), f"{yv:.3g}", fill="black")
        draw.text((px(xv, y0)[0] - 8, height - pad + 8), f"{xv:.2g}", fill="black")
    draw.text((width // 2 - 60, 15), title, fill="black")
    draw.text((width // 2 - 10, height - 25), "scale s", fill="black")
    draw.text((5, 35), y_label, fill="black")
    if reference is not None:
        _, yr = px(x0, reference)
        for xa in range(pad, width - pad, 12):
            draw.line([(xa, yr), (min(xa + 6, width - pad), yr)], fill="gray")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for i, (name, pts) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        points = [px(x, y) for x, y in sorted(pts)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((width - pad - 150, pad + 8 + 14 * i), name, fill=colour)
    return atomic_write(Path(out), lambda tmp: img.save(tmp, format="PNG"))
