"""Accuracy against throughput across evaluation runs, from the runs file `evaluate_local.py` appends to."""

from __future__ import annotations

import json
from pathlib import Path


def read_runs(path: str | Path) -> list[dict]:
    """Every run row of a JSON-lines runs file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_runs(runs: list[dict], output: str | Path) -> None:
    """Mean accuracy (y) against requests per minute (x), one labelled point per run.

    matplotlib is optional (`pip install matplotlib`); without it this raises a RuntimeError saying so.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(7, 5))
    for run in runs:
        x, y = run["requests_per_min"], run["mean_accuracy"]
        ax.scatter([x], [y])
        ax.annotate(run["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("throughput (requests / min)")
    ax.set_ylabel("mean accuracy over evaluated tasks")
    ax.set_title("Switchyard local evaluation: accuracy vs throughput")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
