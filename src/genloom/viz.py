"""Image grids for samples: PNG via matplotlib's image writer (no GUI backend needed)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) floats in [0, 1] → one (rows·(H+pad)+pad, cols·(W+pad)+pad) image."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]  # (N, H, W)
    n, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = x[i]
    return out


def save_grid(images: np.ndarray, path: str | Path, *, nrow: int | None = None, scale: int = 2) -> Path:
    import matplotlib.image

    g = np.clip(grid(images, nrow=nrow), 0.0, 1.0)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, g, cmap="gray", vmin=0.0, vmax=1.0)
    return path


def png_bytes(images: np.ndarray, *, nrow: int | None = None, scale: int = 2) -> bytes:
    import io

    import matplotlib.image

    g = np.clip(grid(images, nrow=nrow), 0.0, 1.0)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, g, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()
