"""Model families behind one protocol (see ``base.py``). ``model_class(kind)`` maps a file's kind to its class."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genloom.models.base import GenerativeModel

# kind -> "module:Class"; imported lazily so that loading one family never imports the others
KINDS: dict[str, str] = {
    "vae": "genloom.models.vae:VAE",
    "gan": "genloom.models.gan:GAN",
    "classifier": "genloom.models.classifier:Classifier",
    "lm": "genloom.models.transformer:TransformerLM",
    "autoencoder": "genloom.models.autoencoder:Autoencoder",
    "flow": "genloom.models.flow:FlowModel",
}


def model_class(kind: str) -> type[GenerativeModel]:
    try:
        mod, cls = KINDS[kind].split(":")
    except KeyError:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None
    return getattr(importlib.import_module(mod), cls)
