"""Plots (matplotlib, optional extra ``plot``). Files are written atomically."""
from __future__ import annotations

import pathlib

from ..io.mrc import atomic_path


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_fsc(result, path, title: str | None = None, others: dict | None = None) -> pathlib.Path:
    """FSC curve(s) against spatial frequency (1/Å) with the 0.5 and 0.143 thresholds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {"FSC": result} if not others else {"FSC": result, **others}
    for label, r in curves.items():
        ax.plot(r.frequencies, r.curve, label=f"{label} ({r.resolution_05:.1f} Å @0.5)")
    for thr in (0.5, 0.143):
        ax.axhline(thr, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return pathlib.Path(path)
