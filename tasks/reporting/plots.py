"""PNG plots for the MLflow run: what was selected, where INT8 loses, which layers clip."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or CI

import matplotlib.pyplot as plt
import numpy as np


def difficulty_histogram(pool: Sequence[float | None], selected: Sequence[float | None], path: Path) -> Path:
    """Pool vs selected difficulty, density-normalised so a K-sized set compares with the pool."""
    bins = np.linspace(0, 1, 21)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([d for d in pool if d is not None], bins=bins, density=True, alpha=0.5, label="pool")
    ax.hist([d for d in selected if d is not None], bins=bins, density=True, alpha=0.5, label="selected")
    ax.set(xlabel="VLM difficulty (mean of passes)", ylabel="density", title="Calibration set vs pool")
    ax.legend()
    return _save(fig, path)


def condition_map_bars(fp16: dict[str, float], int8: dict[str, float], path: Path) -> Path:
    """mAP@[.5:.95] per capture condition, FP16 beside INT8."""
    names = sorted(fp16)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [fp16[n] for n in names], 0.4, label="FP16")
    ax.bar(x + 0.2, [int8.get(n, np.nan) for n in names], 0.4, label="INT8")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="mAP@[.5:.95]", title="Per-condition mAP")
    ax.legend()
    return _save(fig, path)


def clipping_bars(names: Sequence[str], fractions: Sequence[float], flag: float, path: Path) -> Path:
    """Share of FP activations outside each INT8 range, worst layers first."""
    order = np.argsort(fractions)[::-1][:40]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.18 * len(order))))
    values = [100 * fractions[i] for i in order]
    ax.barh(range(len(order)), values, color=["tab:red" if fractions[i] > flag else "tab:blue" for i in order])
    ax.set_yticks(range(len(order)), [names[i][-40:] for i in order], fontsize=6)
    ax.invert_yaxis()
    ax.axvline(100 * flag, color="k", linestyle="--", linewidth=0.8)
    ax.set(xlabel="clipped activations (%)", title=f"Activation clipping per layer (flag > {100 * flag:.0f} %)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
