"""Datasets held in memory as tensors: IDX images (Fashion-MNIST / MNIST) and text corpora."""
