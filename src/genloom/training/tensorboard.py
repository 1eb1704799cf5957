"""TensorBoard event files beside ``metrics.jsonl``: ``tensorboard --logdir runs/`` shows every run.

Every record the Trainer writes to ``metrics.jsonl`` also becomes scalars here: ``train/loss``, ``train/lr``,
``train/grad_norm`` (GAN: ``train/d_grad_norm``, ``train/g_grad_norm``), ``train/samples_per_s`` and the model's
own metrics; ``val/val_loss`` and the validation metrics at each validation. Recipes add sample grids
(``samples``, images) and text samples (``samples``, LM) through ``MetricsLog.image`` / ``MetricsLog.text``.

The writer is tensorboardX (its only dependency beyond numpy is protobuf; ``torch.utils.tensorboard`` needs the
``tensorboard`` package, a 5.5 MB wheel plus grpcio and a server, to *write* a file). It is imported only when a
run starts. On ``--resume`` the writer purges events past the checkpoint's step (TensorBoard then drops them), so
a killed run's tail does not draw a second line.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SKIP = ("type", "step", "epoch")


class TensorBoardLog:
    def __init__(self, logdir: Path, *, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self._w = SummaryWriter(logdir=str(logdir), purge_step=purge_step, flush_secs=10)

    def record(self, rec: dict[str, Any]) -> None:
        """A metrics.jsonl record ({"type": "train" | "val", "step": …, name: number, …}) as scalars."""
        kind, step = rec.get("type"), rec.get("step")
        if kind not in ("train", "val") or not isinstance(step, int):
            return
        for k, v in rec.items():
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            self._w.add_scalar(f"{kind}/{k}", float(v), step)

    def image(self, tag: str, step: int, img: np.ndarray) -> None:
        """A grayscale (H, W) or colour (H, W, 3) image, floats in [0, 1] or uint8."""
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
        self._w.add_image(tag, img, step, dataformats="HW" if img.ndim == 2 else "HWC")

    def text(self, tag: str, step: int, text: str) -> None:
        # TensorBoard renders text as markdown: a code block keeps the line breaks and the spacing
        self._w.add_text(tag, "```\n" + text.replace("```", "'''") + "\n```", step)

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()
