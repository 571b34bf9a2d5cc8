"""One plot shared by the benchmark scripts: per run, the mean curve over seeds with its min-max band."""

from __future__ import annotations

from pathlib import Path


def plot_mean_and_band(series: dict, xlabel: str, ylabel: str, path: Path, reference: tuple[float, str] | None = None) -> Path | None:
    """`series`: {label: (x values, [one y list per seed])}, the y lists cut to the x's length.
    `reference`: an optional horizontal line (value, label). Writes `path`; None when nothing to draw."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, (x, curves) in series.items():
        curves = np.asarray(curves)
        axis.plot(x, curves.mean(0), label=f"{label} (n={len(curves)})")
        axis.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
    if reference is not None:
        axis.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
