"""Metrics as JSON lines, and the loss-curve plot drawn from them at the end of a run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class MetricsLog:
    """Append-only JSON lines. On resume, records past the checkpoint's step are dropped first, so a killed
    run's tail (logged after its last checkpoint) is not duplicated. With ``tensorboard=True`` every record also
    goes to TensorBoard event files in the same directory (``training/tensorboard.py``), and ``image`` / ``text``
    add sample grids and text samples there."""

    def __init__(self, path: Path, *, resume_step: int | None = None, tensorboard: bool = False) -> None:
        self.path = path
        self.tb = None
        if tensorboard:
            from genloom.training.tensorboard import TensorBoardLog

            self.tb = TensorBoardLog(path.parent, purge_step=resume_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))
        self._f = open(path, "a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None:
            self.tb.record(record)

    def image(self, tag: str, step: int, img: Any) -> None:
        """A sample grid (H, W) in [0, 1] for TensorBoard (no-op without it)."""
        if self.tb is not None:
            self.tb.image(tag, step, img)

    def text(self, tag: str, step: int, text: str) -> None:
        """A text sample for TensorBoard (no-op without it)."""
        if self.tb is not None:
            self.tb.text(tag, step, text)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_loss_curve(metrics_path: Path, out: Path, *, title: str = "") -> Path | None:
    """Training loss per step (and validation loss) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in recs if r.get("type") == "train" and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("type") == "val"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


class NullLog:
    """Ranks other than 0 write no metrics (nor TensorBoard images and text)."""

    tb = None

    def write(self, record: dict[str, Any]) -> None:
        pass

    def image(self, tag: str, step: int, img: Any) -> None:
        pass

    def text(self, tag: str, step: int, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory torch allocated on the device; elsewhere the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except (ImportError, OSError):
        return float("nan")
