"""Generator and critic networks for 28×28 images: an MLP pair and a DCGAN-style conv pair.

Conv pair (Gulrajani et al. 2017, ``gan_mnist.py``, with DIM = ``dim`` and kernel k, 5 in the paper):
  generator  z → fc 4·4·4D, ReLU → ConvT 4D→2D (4→8), crop to 7, ReLU → ConvT 2D→D (7→14), ReLU
             → ConvT D→1 (14→28), sigmoid
  critic     x → conv D (28→14), LReLU → conv 2D (14→7), LReLU → conv 4D (7→4 or 3), LReLU → fc → 1
No batch norm in the critic: the gradient penalty is per sample, and batch norm would couple the samples of a
batch. ``norm="layer"`` adds a per-sample layer norm (GroupNorm with one group); ``spectral=True`` wraps every
critic layer in spectral normalization (Miyato et al. 2018). Conditional models concatenate a one-hot label to
z in the generator and use a projection critic (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _pad(k: int) -> tuple[int, int]:
    """Padding and output_padding so that a stride-2 conv halves (rounding up) and a ConvT exactly doubles.
    ConvT output = (in - 1)·2 - 2p + k + op = 2·in  ⇒  op = 2 + 2p - k."""
    p = (k - 1) // 2
    return p, 2 + 2 * p - k


def _conv_size(n: int, k: int) -> int:
    p, _ = _pad(k)
    return (n + 2 * p - k) // 2 + 1  # stride-2 conv output size


class _Onehot(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.num_classes:
            return z
        if labels is None:
            raise ValueError("this is a conditional GAN: pass labels")
        return torch.cat([z, F.one_hot(labels.long(), self.num_classes).to(z.dtype)], dim=1)  # (B, latent + C)


class ConvGenerator(nn.Module):
    def __init__(self, *, latent: int, dim: int, kernel: int, num_classes: int, norm: str = "none") -> None:
        super().__init__()
        p, op = _pad(kernel)
        self.dim = dim
        self.cond = _Onehot(num_classes)
        self.fc = nn.Linear(latent + num_classes, 4 * 4 * 4 * dim)
        self.up1 = nn.ConvTranspose2d(4 * dim, 2 * dim, kernel, 2, p, op)
        self.up2 = nn.ConvTranspose2d(2 * dim, dim, kernel, 2, p, op)
        self.up3 = nn.ConvTranspose2d(dim, 1, kernel, 2, p, op)
        bn = norm == "batch"  # DCGAN: batch norm after every generator layer but the last
        self.bn0 = nn.BatchNorm2d(4 * dim) if bn else nn.Identity()
        self.bn1 = nn.BatchNorm2d(2 * dim) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(dim) if bn else nn.Identity()

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.cond(z, labels)).view(len(z), 4 * self.dim, 4, 4)
        h = F.relu(self.bn0(h))  # (B, 4D, 4, 4)
        h = F.relu(self.bn1(self.up1(h)[:, :, :7, :7]))  # (B, 2D, 8, 8) cropped to (B, 2D, 7, 7)
        h = F.relu(self.bn2(self.up2(h)))  # (B, D, 14, 14)
        return torch.sigmoid(self.up3(h))  # (B, 1, 28, 28) in [0, 1]


class ConvCritic(nn.Module):
    def __init__(self, *, dim: int, kernel: int, num_classes: int, norm: str, spectral: bool) -> None:
        super().__init__()
        p, _ = _pad(kernel)
        sn = spectral_norm if spectral else (lambda m: m)
        s = _conv_size(_conv_size(_conv_size(28, kernel), kernel), kernel)  # 4 for k = 3 or 5, 3 for k = 4
        self.conv1 = sn(nn.Conv2d(1, dim, kernel, 2, p))
        self.conv2 = sn(nn.Conv2d(dim, 2 * dim, kernel, 2, p))
        self.conv3 = sn(nn.Conv2d(2 * dim, 4 * dim, kernel, 2, p))
        layer = norm == "layer"
        self.norm2 = nn.GroupNorm(1, 2 * dim) if layer else nn.Identity()  # one group = layer norm per sample
        self.norm3 = nn.GroupNorm(1, 4 * dim) if layer else nn.Identity()
        self.feat_dim = 4 * dim * s * s
        self.out = sn(nn.Linear(self.feat_dim, 1))
        self.embed = sn(nn.Embedding(num_classes, self.feat_dim)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)  # (B, D, 14, 14)
        h = F.leaky_relu(self.norm2(self.conv2(h)), 0.2)  # (B, 2D, 7, 7)
        h = F.leaky_relu(self.norm3(self.conv3(h)), 0.2)  # (B, 4D, s, s)
        return _project(self, h.flatten(1), labels)  # (B,)


class MLPGenerator(nn.Module):
    def __init__(self, *, latent: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cond = _Onehot(num_classes)
        self.net = nn.Sequential(nn.Linear(latent + num_classes, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                 nn.Linear(dim, 784))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.net(self.cond(z, labels))).view(len(z), 1, 28, 28)  # (B, 1, 28, 28)


class MLPCritic(nn.Module):
    def __init__(self, *, dim: int, num_classes: int, norm: str, spectral: bool) -> None:
        super().__init__()
        sn = spectral_norm if spectral else (lambda m: m)
        ln = (lambda: nn.LayerNorm(dim)) if norm == "layer" else nn.Identity
        self.net = nn.Sequential(sn(nn.Linear(784, dim)), nn.LeakyReLU(0.2), sn(nn.Linear(dim, dim)), ln(),
                                 nn.LeakyReLU(0.2))
        self.feat_dim = dim
        self.out = sn(nn.Linear(dim, 1))
        self.embed = sn(nn.Embedding(num_classes, dim)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return _project(self, self.net(x.flatten(1)), labels)  # (B, 784) → (B,)


def _project(critic: nn.Module, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩ (the second term only for a conditional critic). h: (B, F) → (B,)."""
    d = critic.out(h).squeeze(1)
    if critic.embed is not None:
        if labels is None:
            raise ValueError("this is a conditional GAN: pass labels")
        d = d + (critic.embed(labels.long()) * h).sum(1)
    return d
