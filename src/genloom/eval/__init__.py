"""Evaluation: ELBO / IWAE bounds (VAE), FID (image models), next-token loss (LM)."""
