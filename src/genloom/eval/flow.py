"""Evaluation of a flow model: FID (the shared evaluator's features and statistics) and, for a conditional model,
the class accuracy of its samples — the fraction the FID classifier labels as the class that was asked for.

Both come from the same samples: labels cycle through the classes (0, 1, …, 9, 0, …) as in ``eval/fid.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genloom.eval.fid import feature_stats, frechet_distance


@torch.inference_mode()
def fid_and_accuracy(model: Any, classifier: torch.nn.Module, real: tuple[np.ndarray, np.ndarray], *,
                     n: int = 10_000, seed: int = 0, batch_size: int = 500, **sample_kw: Any) -> dict[str, float]:
    """{"fid", "class_accuracy"} (the latter only for a conditional model and guidance > 0)."""
    g = torch.Generator().manual_seed(seed)
    num_classes = int(model.config.num_classes)
    feats, correct = [], 0
    classifier.eval()
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        labels = (torch.arange(i, i + b) % num_classes) if num_classes else None
        imgs = model.generate(b, generator=g, labels=labels, **sample_kw).float().clamp(0, 1)  # (b, 1, 28, 28)
        f = classifier.features(imgs)  # (b, F)
        feats.append(f.double().numpy())
        if labels is not None:
            correct += int((classifier.head(f).argmax(1) == labels).sum())
    mu, sigma = feature_stats(np.concatenate(feats))
    out = {"fid": frechet_distance(real[0], real[1], mu, sigma)}
    guidance = sample_kw.get("guidance")
    guidance = model.config.guidance if guidance is None else guidance
    if num_classes and guidance > 0:
        out["class_accuracy"] = correct / n
    return out
