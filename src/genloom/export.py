"""Self-describing model files: safetensors weights + metadata that rebuilds the model from the file alone.

``__metadata__`` (all strings): ``genloom.format`` (version), ``genloom.kind``, ``genloom.config`` (JSON of the
config dataclass), ``genloom.provenance`` (JSON: dataset, metrics, genloom version, …), and per-kind extras such
as ``genloom.vocab`` (JSON list of characters) for the LM. Weights are loaded memory-mapped; nothing is pickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

import genloom
from genloom.errors import ModelFileError
from genloom.fileformat import FORMAT_VERSION, ModelFile, atomic_write, read_header
from genloom.models import model_class
from genloom.models.base import config_from_dict, config_to_json

__all__ = ["ModelFile", "read_header", "save", "load", "build", "FORMAT_VERSION"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)  # never save the torch.compile wrapper's prefixed names


def save(model: torch.nn.Module, path: str | Path, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (``fileformat.atomic_write``: temp file, fsync, rename, fsync dir)."""
    model = _unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "genloom.format": FORMAT_VERSION,
        "genloom.kind": model.kind,
        "genloom.config": config_to_json(model.config),
        "genloom.provenance": json.dumps({"genloom_version": genloom.__version__, **(provenance or {})},
                                         sort_keys=True, default=str),
        **model.export_extras(),
    }
    # Tied weights (e.g. the LM head) are stored once, under the first name: safetensors refuses shared storage.
    state = model.state_dict()
    tensors = {name: state[name].detach().contiguous().cpu() for name in set(_aliases(model).values())}
    data = save_bytes(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def build(info: ModelFile) -> torch.nn.Module:
    """Construct an (uninitialised-weights) model of the right class and config from the header."""
    try:
        cls = model_class(info.kind)
    except KeyError as e:
        raise ModelFileError(f"{info.path}: {e.args[0]}; this file needs a newer genloom") from None
    try:
        raw = cls.upgrade_config(dict(info.config)) if hasattr(cls, "upgrade_config") else info.config
        config = config_from_dict(cls.config_class, raw)
        if hasattr(cls, "from_metadata"):
            return cls.from_metadata(config, info.metadata)
        return cls(config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{info.path}: invalid {info.kind} config in metadata: {e}") from None


def load(path: str | Path, *, device: str = "cpu") -> torch.nn.Module:
    """Rebuild the model from the file alone; weights are read memory-mapped. Returns the model in eval mode."""
    info = read_header(path)
    with torch.device("meta"), _SkipInit():
        model = build(info)
    expected = model.state_dict()
    aliases = _aliases(model)  # tied weights are stored once; map every name to the stored one
    stored = set(info.tensors)
    missing = sorted({aliases[k] for k in expected} - stored)
    extra = sorted(stored - {aliases[k] for k in expected})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}")
        raise ModelFileError(f"{info.path}: weights do not match its {info.kind} config: " + "; ".join(parts))
    for name, t in expected.items():
        dtype, shape = info.tensors[aliases[name]]
        if list(t.shape) != shape:
            raise ModelFileError(f"{info.path}: tensor {name!r} has shape {shape}, the config needs "
                                 f"{list(t.shape)}")
    state = {}
    try:
        with safe_open(str(info.path), framework="pt", device=device) as f:
            stored_tensors = {k: f.get_tensor(k) for k in stored}
        state = {name: stored_tensors[aliases[name]] for name in expected}
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise ModelFileError(f"{info.path}: cannot read weights ({e}); the file is corrupt — export it again"
                             ) from None
    model.load_state_dict(state, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.eval()
    return model


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Skip weight initialisation while building on the meta device: the weights are replaced from the file anyway,
    and ``normal_`` on a meta tensor goes through ``torch._refs``, which imports ``torch._dynamo`` (4 s on a busy
    CPU) — the LM and GAN loads paid that on every cold start."""

    INIT = {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
            "xavier_normal_", "zeros_", "ones_", "constant_", "orthogonal_"}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.INIT:
            t = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes the tensor by keyword
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """State-dict name -> the first name of the same parameter/buffer object (tied weights share one)."""
    ids: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        ids[name] = id(p)
    for name, b in model.named_buffers(remove_duplicate=False):
        ids[name] = id(b)
    first: dict[int, str] = {}
    out = {}
    for name in model.state_dict(keep_vars=True):
        key = ids.get(name, id(name))
        out[name] = first.setdefault(key, name)
    return out
