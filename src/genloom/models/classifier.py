"""A small CNN classifier for 28×28 images: the feature extractor behind genloom's FID.

conv 3×3 1→32, max-pool → conv 3×3 32→64, max-pool → conv 3×3 stride 2 64→64 → fc 1024→128 → fc 128→10.
About 190k parameters (0.75 MB as float32). ``features(x)`` returns the 128-d penultimate activations; the FID
compares their mean and covariance between real and generated images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genloom.errors import ConfigError
from genloom.models.base import GenerativeModel, LossOutput


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10
    width: int = 32  # channels of the first conv; the next two have 2× that
    feature_dim: int = 128
    dropout: float = 0.3
    image_shape: tuple[int, ...] = (1, 28, 28)

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.width < 1 or self.feature_dim < 1:
            raise ConfigError("num_classes must be ≥ 2, width and feature_dim ≥ 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if tuple(self.image_shape) != (1, 28, 28):
            raise ConfigError("the classifier is built for (1, 28, 28) images")


class Classifier(GenerativeModel):
    """Not generative: it shares the protocol so that the Trainer, export and load work unchanged."""

    kind: ClassVar[str] = "classifier"
    config_class: ClassVar[type] = ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        w = c.width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * w * 4 * 4, c.feature_dim)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) in [0, 1] → (B, feature_dim) penultimate activations (after ReLU)."""
        h = x.reshape(len(x), 1, 28, 28) * 2.0 - 1.0  # to [-1, 1]
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)  # (B, w, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 2w, 7, 7)
        h = F.relu(self.conv3(h))  # (B, 2w, 4, 4)
        h = F.dropout(h.flatten(1), self.config.dropout, self.training)  # (B, 2w·16)
        return F.relu(self.fc(h))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(F.dropout(self.features(x), self.config.dropout, self.training))

    def loss(self, batch: Any) -> LossOutput:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)  # -mean log softmax(logits)[y]
        err = (logits.argmax(1) != y).float().mean()
        # validation selects on the loss; the error rate rides along as a metric
        return LossOutput(loss, {"error": float(err)}, n=len(x))

    def generate(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> Any:
        raise TypeError("a classifier does not generate samples; use it with `genloom eval --fid`")

    @torch.inference_mode()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> float:
        """Fraction correct on uint8 (N, 28, 28) or float (N, 1, 28, 28) images in [0, 1]."""
        self.eval()
        correct = 0
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
            correct += int((self(x).argmax(1) == labels[i:i + batch_size]).sum())
        return correct / max(len(images), 1)
