"""PNG figures of the MRA method of moments (matplotlib, the optional ``plot`` extra; written
atomically through ``orbitcore.metrics.plots``)."""
from __future__ import annotations

import pathlib

import numpy as np
import torch

from ..io import atomic_path
from ..metrics.errors import mra_relative_error


def _align_to(est: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """``est`` shifted onto ``truth`` (the minimiser of eq. 21), for display."""
    _, s = mra_relative_error(est, truth, return_shift=True)
    return torch.roll(torch.as_tensor(est, dtype=torch.float64), -int(s)).numpy()


def _save(fig, plt, path) -> pathlib.Path:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return pathlib.Path(path)


def plot_reconstruction(path, results: dict, truth=None, title: str | None = None) -> pathlib.Path:
    """Signal and density of one or more reconstructions (``{label: Reconstruction}``), shifted
    onto the truth when it is given, and their eq. 26 / eq. 22 / eq. 21 curves."""
    from ..metrics.plots import _plt  # noqa: PLC0415

    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    first = next(iter(results.values()))
    n = first.v.shape[-1]
    x = (np.arange(n) - n // 2) / n
    ax_v, ax_r, ax_l, ax_e = axes.ravel()
    if truth is not None:
        ax_v.plot(x, np.asarray(truth[0], dtype=float), "k-", lw=2, label="truth")
        ax_r.plot(x, np.asarray(truth[1], dtype=float), "k-", lw=2, label="truth")
    for i, (label, rec) in enumerate(results.items()):
        v = _align_to(rec.v, truth[0]) if truth is not None else rec.v.double().numpy()
        rho = _align_to(rec.rho, truth[1]) if truth is not None else rec.rho.double().numpy()
        ax_v.plot(x, v, "--", color=f"C{i}", label=label)
        ax_r.plot(x, rho, "--", color=f"C{i}", label=label)
        h = rec.history
        it = np.arange(len(h["loss"]))
        ax_l.semilogy(it, np.asarray(h["m1_error"]) + np.asarray(h["m2_error"]), color=f"C{i}",
                      label=f"{label}: eq. 22, M1 + M2")
        if "v_error" in h:
            ax_e.plot(it, h["v_error"], color=f"C{i}", label=f"{label}: v")
            ax_e.plot(it, h["rho_error"], ":", color=f"C{i}", label=f"{label}: ρ")
    ax_v.set_title("signal v (real space)" + (", estimates shifted onto the truth" if truth is not None else ""))
    ax_r.set_title("density ρ on the shifts")
    for ax in (ax_v, ax_r):
        ax.set_xlabel("x (period 1)")
        ax.legend(fontsize=8)
    ax_l.set_title("relative moment errors (eq. 22)")
    ax_l.set_xlabel("iteration")
    ax_l.legend(fontsize=8)
    if truth is not None:
        ax_e.set_title("reconstruction errors (eq. 21)")
        ax_e.set_xlabel("iteration")
        ax_e.set_ylim(0, None)
        ax_e.legend(fontsize=8)
    else:
        for label, rec in results.items():
            ax_e.semilogy(np.arange(len(rec.history["loss"])), rec.history["loss"], label=label)
        ax_e.set_title("loss (eq. 26)")
        ax_e.set_xlabel("iteration")
        ax_e.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, plt, path)


def plot_convergence(path, curves: dict, title: str | None = None, floors: dict | None = None) -> pathlib.Path:
    """Figure 4 of seeds/000: mean ``log10`` of the summed moment errors (eq. 22) and mean
    reconstruction errors (eq. 21) against the iteration. ``curves[label]`` holds arrays
    ``log10_moment_error``, ``v_error``, ``rho_error`` (same length); ``floors`` optional
    reference levels (same keys) drawn as dashed lines (e.g. the truth's own moment error)."""
    from ..metrics.plots import _plt  # noqa: PLC0415

    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(7, 9), sharex=True)
    for i, (label, c) in enumerate(curves.items()):
        it = np.arange(len(c["log10_moment_error"]))
        axes[0].plot(it, c["log10_moment_error"], color=f"C{i}", label=label)
        axes[1].plot(it, c["v_error"], color=f"C{i}", label=label)
        axes[2].plot(it, c["rho_error"], color=f"C{i}", label=label)
        for ax, key in ((axes[1], "v_error_continuous"), (axes[2], "rho_error_continuous")):
            if key in c:
                ax.plot(it, c[key], ":", color=f"C{i}", lw=1)
    for ax, key in zip(axes, ("log10_moment_error", "v_error", "rho_error")):
        if floors and key in floors:
            ax.axhline(floors[key], color="k", ls="--", lw=1, label="the truth itself (noise floor)")
    axes[0].set_ylabel("log10(rel. err. M1 + rel. err. M2)")
    axes[1].set_ylabel("eq. 21 error of v")
    axes[2].set_ylabel("eq. 21 error of ρ")
    if any("v_error_continuous" in c for c in curves.values()):
        axes[1].set_title("solid: shifts on the grid (eq. 21); dotted: continuous shifts", fontsize=9)
    axes[2].set_xlabel("iteration")
    for ax in axes[1:]:
        ax.set_ylim(0, None)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        axes[0].set_title(title)
    if any(len(c["v_error"]) > 300 for c in curves.values()):
        for ax in axes:
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)
    return _save(fig, plt, path)


__all__ = ["plot_reconstruction", "plot_convergence"]
