"""Report plots: reliability diagrams and per-metric confusion matrices (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from training.evaluation.calibrate import ece, reliability_bins  # noqa: E402


def reliability_diagram(path: Path, title: str, series: dict[str, tuple[Sequence[float], Sequence[bool]]]) -> Path:
    """One line per named (confidences, correct) series against the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, (conf, corr) in series.items():
        centres, acc, count = reliability_bins(conf, corr)
        keep = count > 0
        ax.plot(centres[keep], acc[keep], "o-", label=f"{name} (ECE {ece(conf, corr):.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(
    path: Path, title: str, truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> Path:
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(
        np.asarray(truth), np.asarray(predicted), labels=list(labels), ax=ax, colorbar=False
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
