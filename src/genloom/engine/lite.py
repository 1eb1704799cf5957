"""The torch-free inference path: VAE decoder/encoder and GAN generator in numpy on memory-mapped weights.

``import torch`` alone takes 1.6–2.2 s on the development machine; numpy and this module take ~0.15 s. This path
is for serverless-style cold starts and small worker processes: it never imports torch (tests check
``sys.modules``), reads the safetensors header itself, and maps the weights with ``np.memmap`` (zero-copy, so a
1 GB file is ready in milliseconds and pages are read on first use).

    from genloom.engine.lite import load
    eng = load("model.safetensors")      # or genloom.engine.load(path, backend="numpy")
    imgs = eng.sample(16, seed=0)        # the same images as the torch engines for the same seed (|Δ| ≤ 1e-5)

Threads: ``load(threads=)`` sets numpy's OpenBLAS pool size (``OPENBLAS_NUM_THREADS`` before numpy is imported,
else ``openblas_set_num_threads`` through ctypes, best effort); the pool is process-wide.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Sequence

from genloom.engine.base import Engine
from genloom.errors import ModelFileError
from genloom.fileformat import ModelFile, read_header

LiteHeader = ModelFile  # the header type of this path (the same as export's); kept for callers of the old name


class Weights:
    """Tensors of one file as numpy arrays over one read-only memory map (no copy for float32)."""

    def __init__(self, header: ModelFile) -> None:
        import numpy as np

        self.header = header
        self._map = np.memmap(header.path, dtype=np.uint8, mode="r")

    def get(self, name: str, shape: Sequence[int] | None = None) -> Any:
        import numpy as np

        h = self.header
        if name not in h.tensors:
            raise ModelFileError(f"{h.path}: tensor {name!r} is missing; the file does not match its "
                                 f"{h.kind} config — export it again")
        dtype, shp = h.tensors[name]
        if shape is not None and list(shape) != shp:
            raise ModelFileError(f"{h.path}: tensor {name!r} has shape {shp}, the config needs {list(shape)}")
        a, b = h.offsets[name]
        raw = self._map[h.data_start + a:h.data_start + b]
        if dtype == "F32":
            arr = raw.view("<f4")
        elif dtype == "BF16":  # bfloat16 = the top 16 bits of a float32
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in ("F16", "F64"):
            arr = raw.view("<f2" if dtype == "F16" else "<f8").astype(np.float32)
        elif dtype == "BOOL":  # flags such as the GAN's sample_from_ema
            arr = raw.view(np.bool_)
        else:
            raise ModelFileError(f"{h.path}: tensor {name!r} has dtype {dtype}; the numpy path reads F32, BF16, "
                                 f"F16, F64 and BOOL")
        return arr.reshape(shp)


def _act(name: str, h: Any) -> Any:
    import numpy as np

    if name == "relu":
        return np.maximum(h, 0.0, out=h)
    if name == "silu":  # SiLU(x) = x · σ(x)
        return np.multiply(h, _sigmoid(h.copy()), out=h)
    raise ModelFileError(f"activation {name!r} is not supported by the numpy path (relu, silu)")


def _sigmoid(h: Any) -> Any:
    """σ(x) = 1 / (1 + e^(−x)), in place."""
    import numpy as np

    np.negative(h, out=h)
    np.exp(h, out=h)
    h += 1.0
    return np.reciprocal(h, out=h)


def _linear(h: Any, w: Any, b: Any) -> Any:
    """y = h Wᵀ + b with W (out, in) as stored by torch: BLAS reads the transpose in place."""
    out = h @ w.T
    out += b
    return out


def conv_transpose2d(x: Any, w: Any, b: Any, *, stride: int, padding: int, output_padding: int) -> Any:
    """torch.nn.ConvTranspose2d in numpy. x (n, Cin, H, W), w (Cin, Cout, k, k) → (n, Cout, Ho, Wo) with
    Ho = (H − 1)·s − 2p + k + op. Each input pixel scatters w[c] · x into a k×k window at (s·i, s·j) of the full
    (unpadded) output; one matmul computes all windows, k² strided adds place them, then the padding is cut."""
    import numpy as np

    n, cin, H, W = x.shape
    cout, k = w.shape[1], w.shape[2]
    cols = x.transpose(0, 2, 3, 1).reshape(n * H * W, cin) @ w.reshape(cin, cout * k * k)  # (nHW, Cout·k·k)
    cols = np.ascontiguousarray(cols.reshape(n, H, W, cout, k, k).transpose(0, 3, 4, 5, 1, 2))  # (n,Co,k,k,H,W)
    ho, wo = (H - 1) * stride - 2 * padding + k + output_padding, (W - 1) * stride - 2 * padding + k + output_padding
    full = np.zeros((n, cout, max((H - 1) * stride + k, padding + ho), max((W - 1) * stride + k, padding + wo)),
                    np.float32)
    for ki in range(k):
        for kj in range(k):
            full[:, :, ki:ki + stride * H:stride, kj:kj + stride * W:stride] += cols[:, :, ki, kj]
    out = full[:, :, padding:padding + ho, padding:padding + wo]
    return out + b[None, :, None, None]  # (n, Cout, Ho, Wo)


def _mlp_layers(wts: Weights, prefix: str, sizes: list[int]) -> list[tuple[Any, Any]]:
    """(W, b) of an ``nn.Sequential`` of Linear layers with activations between them (indices 0, 2, 4, …)."""
    return [(wts.get(f"{prefix}{2 * i}.weight", (sizes[i + 1], sizes[i])), wts.get(f"{prefix}{2 * i}.bias",
                                                                                  (sizes[i + 1],)))
            for i in range(len(sizes) - 1)]


def _run_mlp(h: Any, layers: list[tuple[Any, Any]], act: str, *, final_act: bool = False) -> Any:
    for i, (w, b) in enumerate(layers):
        h = _linear(h, w, b)
        if i < len(layers) - 1 or final_act:
            h = _act(act, h)
    return h


class LiteEngineBase(Engine):
    """Shared by the numpy VAE and GAN engines: same calls and validation as ``engine.image``."""

    kind: ClassVar[str]
    backend = "numpy"
    max_batch = 256
    latent: int
    num_classes: int

    def __init__(self, header: ModelFile) -> None:
        self.header = header
        self.weights = Weights(header)

    def sample(self, n: int, *, seed: int | None = None, labels: Sequence[int] | None = None) -> Any:
        from genloom.engine.base import sample_inputs

        return self._images(*sample_inputs(self, n, seed, labels))

    def decode(self, z: Any, *, labels: Sequence[int] | None = None) -> Any:
        from genloom.engine.base import check_labels, check_latent

        z = check_latent(z, self.latent)
        return self._images(z, check_labels(labels, len(z), self.num_classes))

    def _images(self, z: Any, y: Any) -> Any:
        import numpy as np

        from genloom.engine.base import IMAGE_HW, onehot

        if y is not None:
            z = np.concatenate([z, onehot(y, self.num_classes)], axis=1)  # (n, latent + C)
        out = self._forward(np.ascontiguousarray(z, dtype=np.float32))
        return np.clip(out, 0.0, 1.0).reshape(len(z), *IMAGE_HW)  # (n, 28, 28)

    def _forward(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": self.backend, "max_batch": self.max_batch}


class LiteVAE(LiteEngineBase):
    kind: ClassVar[str] = "vae"

    def __init__(self, header: ModelFile) -> None:
        super().__init__(header)
        c = header.config
        if c.get("likelihood", "bernoulli") not in ("bernoulli", "gaussian"):
            raise ModelFileError(f"{header.path}: unknown VAE likelihood {c.get('likelihood')!r}")
        self.latent, self.num_classes = int(c.get("latent", 20)), int(c.get("num_classes", 0))
        self.x_dim = int(c.get("x_dim", 784))
        if int(c.get("ar_kernel", 0)):
            raise ModelFileError(f"{header.path}: this VAE has an autoregressive pixel head, which the numpy path "
                                 f"does not run; load it with genloom.engine.load (torch)")
        self.act = str(c.get("activation", "relu"))  # files older than the field used ReLU
        enc, dec = list(c.get("enc_hidden", [400])), list(c.get("dec_hidden", [400]))
        self.dec = _mlp_layers(self.weights, "decoder.", [self.latent + self.num_classes, *dec, self.x_dim])
        self.enc = _mlp_layers(self.weights, "encoder.0.", [self.x_dim + self.num_classes, *enc])
        self.mu = (self.weights.get("fc_mu.weight", (self.latent, enc[-1])),
                   self.weights.get("fc_mu.bias", (self.latent,)))

    def _forward(self, x: Any) -> Any:
        return _sigmoid(_run_mlp(x, self.dec, self.act))  # (n, 784) Bernoulli means

    def encode(self, x: Any, *, labels: Sequence[int] | None = None) -> Any:
        """Images (n, 28, 28) in [0, 1] → posterior means μ(x), (n, latent)."""
        import numpy as np

        from genloom.engine.base import check_images, check_labels, onehot

        h = check_images(x, x_dim=self.x_dim)
        y = check_labels(labels, len(h), self.num_classes)
        if y is not None:
            h = np.concatenate([h, onehot(y, self.num_classes)], axis=1)  # (n, 784 + C)
        h = _run_mlp(h, self.enc, self.act, final_act=True)
        return _linear(h, *self.mu)

    def reconstruct(self, x: Any, *, labels: Sequence[int] | None = None) -> Any:
        return self.decode(self.encode(x, labels=labels), labels=labels)

    def interpolate(self, a: Any, b: Any, *, steps: int = 8, label: int | None = None) -> Any:
        import numpy as np

        from genloom.engine.base import check_latent, check_seed, check_steps, noise, slerp

        steps = check_steps(steps)
        ends = []
        for v, field in ((a, "a"), (b, "b")):
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                ends.append(noise(check_seed(v), 1, self.latent)[0])
            else:
                ends.append(check_latent(v, self.latent, field=field, max_n=1)[0])
        return self.decode(slerp(ends[0], ends[1], steps), labels=None if label is None else [label])


class LiteGAN(LiteEngineBase):
    kind: ClassVar[str] = "gan"

    def __init__(self, header: ModelFile) -> None:
        super().__init__(header)
        c = header.config
        self.latent, self.num_classes = int(c.get("latent", 128)), int(c.get("num_classes", 0))
        self.arch, dim, k = str(c.get("arch", "conv")), int(c.get("dim", 64)), int(c.get("kernel", 5))
        use_ema = bool(self.weights.get("sample_from_ema").reshape(-1)[0]) if "sample_from_ema" in \
            header.tensors else False
        g = "ema." if use_ema else "generator."
        w = self.weights
        d_in = self.latent + self.num_classes
        if self.arch == "mlp":
            self.layers = _mlp_layers(w, f"{g}net.", [d_in, dim, dim, 784])
        elif self.arch == "conv":
            self.dim, self.k = dim, k
            self.p = (k - 1) // 2  # same padding rule as gan_nets._pad: a stride-2 ConvT exactly doubles
            self.op = 2 + 2 * self.p - k
            self.fc = (w.get(f"{g}fc.weight", (16 * 4 * dim, d_in)), w.get(f"{g}fc.bias", (16 * 4 * dim,)))
            self.ups = [(w.get(f"{g}up{i}.weight", (ci, co, k, k)), w.get(f"{g}up{i}.bias", (co,)))
                        for i, (ci, co) in enumerate([(4 * dim, 2 * dim), (2 * dim, dim), (dim, 1)], start=1)]
            # batch norm (gen_norm "batch") in eval mode is a per-channel affine map: γ(h − μ)/√(σ² + ε) + β
            self.bns = [_batch_norm(w, f"{g}bn{i}.", c) for i, c in enumerate([4 * dim, 2 * dim, dim])]
        else:
            raise ModelFileError(f"{header.path}: unknown GAN arch {self.arch!r} (conv, mlp)")

    def _forward(self, x: Any) -> Any:
        import numpy as np

        if self.arch == "mlp":
            return _sigmoid(_run_mlp(x, self.layers, "relu"))  # (n, 784)
        h = _linear(x, *self.fc).reshape(len(x), 4 * self.dim, 4, 4)  # (n, 4D, 4, 4)
        h = np.maximum(_affine(h, self.bns[0]), 0.0)
        for i, (w, b) in enumerate(self.ups):
            h = conv_transpose2d(h, w, b, stride=2, padding=self.p, output_padding=self.op)
            if i == 0:
                h = h[:, :, :7, :7]  # (n, 2D, 8, 8) cropped to (n, 2D, 7, 7)
            if i < 2:
                h = np.maximum(_affine(h, self.bns[i + 1]), 0.0)
        return _sigmoid(np.ascontiguousarray(h.reshape(len(x), 784)))  # (n, 784)


def _batch_norm(w: Weights, prefix: str, channels: int) -> tuple[Any, Any] | None:
    """(scale, shift) per channel, shaped (1, C, 1, 1), for a BatchNorm2d in eval mode; None when there is none."""
    import numpy as np

    if f"{prefix}running_mean" not in w.header.tensors:
        return None
    gamma, beta = w.get(f"{prefix}weight", (channels,)), w.get(f"{prefix}bias", (channels,))
    mean, var = w.get(f"{prefix}running_mean", (channels,)), w.get(f"{prefix}running_var", (channels,))
    scale = gamma / np.sqrt(var + 1e-5)  # BatchNorm2d's default ε
    return scale.reshape(1, -1, 1, 1).astype(np.float32), (beta - mean * scale).reshape(1, -1, 1, 1).astype(np.float32)


def _affine(h: Any, bn: tuple[Any, Any] | None) -> Any:
    return h if bn is None else h * bn[0] + bn[1]


def set_blas_threads(threads: int) -> bool:
    """Size numpy's OpenBLAS thread pool; True if it could be set."""
    if "numpy" not in sys.modules:
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
        return True
    import ctypes
    import glob

    import numpy as np

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas*"))
    for lib in libs:
        try:
            cdll = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(cdll, sym, None)
            if fn is not None:
                fn(ctypes.c_int(threads))
                return True
    return False


def load(path: str | Path, *, threads: int | None = None) -> LiteVAE | LiteGAN:
    """A numpy engine for a VAE or GAN file; never imports torch."""
    if threads is not None:
        set_blas_threads(threads)
    header = read_header(path)
    if header.kind == "vae":
        return LiteVAE(header)
    if header.kind == "gan":
        return LiteGAN(header)
    raise ModelFileError(f"{path}: the numpy path serves vae and gan files, not {header.kind!r}; "
                         f"use genloom.engine.load(path) (torch)")
