"""genloom: train → export → serve generative models (VAE, GAN, Transformer LM)."""

__version__ = "0.1.0"
