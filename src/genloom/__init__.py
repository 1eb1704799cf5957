"""genloom: train → export → serve generative models (VAE, GAN, Transformer LM).

The Python API is the CLI's: ``genloom.train("vae", out="runs/vae", epochs=10)`` runs ``genloom train vae
--out runs/vae --epochs 10``; ``sample``, ``generate`` and ``evaluate`` are ``genloom sample`` / ``eval``.
Importing genloom imports neither torch nor numpy (``genloom.engine.lite`` stays torch-free).
"""

from genloom.api import evaluate, generate, sample, train

__version__ = "0.1.0"
__all__ = ["evaluate", "generate", "sample", "train", "__version__"]
