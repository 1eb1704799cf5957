"""Server and per-model settings: frozen dataclasses, validated once at start-up.

Sources, later wins: built-in defaults < ``--config FILE.toml`` < command-line flags. A TOML file looks like::

    host = "127.0.0.1"
    port = 8000
    admin_token_env = "GENLOOM_ADMIN_TOKEN"   # the admin bearer token is read from this env variable

    [defaults]            # every model
    max_batch_size = 64
    max_wait_ms = 2.0

    [models.vae]          # one model (the name as in NAME=PATH)
    path = "runs/vae/model.safetensors"
    max_queue = 512
    device = "cuda:1"     # where its worker runs it, and in what precision (genloom.engine.load)
    precision = "bf16"
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genloom.core.names import check_name, parse_model_args
from genloom.core.requests import DEFAULT_LIMITS, Limits
from genloom.errors import GenloomError

ADMIN_TOKEN_ENV = "GENLOOM_ADMIN_TOKEN"


@dataclass(frozen=True)
class ModelSettings:
    """How one model is batched, bounded and timed."""

    max_batch_size: int = 64  # images per forward pass (VAE/GAN) or decode slots (LM)
    max_wait_ms: float = 2.0  # a batch waits at most this long after its first request
    max_queue: int = 256  # queued requests per model; beyond it → 503 + Retry-After
    max_n: int = DEFAULT_LIMITS.max_n  # largest n a single /sample request may ask for
    max_new_tokens: int = DEFAULT_LIMITS.max_new_tokens  # largest max_new_tokens of a /generate request
    timeout_s: float = 30.0  # default per-request deadline (header X-Request-Timeout overrides, up to 10x)
    threads: int = 1  # torch intra-op threads inside the worker process
    backend: str = "auto"  # engine backend (genloom.engine.load); "exact" for bit-reproducible fp32
    device: str = "cpu"  # where the worker runs the model (genloom.engine.load(device=...))
    precision: str = "auto"  # the model's type in the worker (genloom.engine.load(precision=...))

    @property
    def limits(self) -> Limits:
        """The request caps (``core.requests``) of this model: the defaults of every transport unless changed."""
        return dataclasses.replace(DEFAULT_LIMITS, max_n=self.max_n, max_new_tokens=self.max_new_tokens)

    def __post_init__(self) -> None:
        checks = {"max_batch_size": self.max_batch_size >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_queue": self.max_queue >= 1, "max_n": self.max_n >= 1,
                  "max_new_tokens": self.max_new_tokens >= 1, "timeout_s": self.timeout_s > 0,
                  "threads": self.threads >= 1}
        for name, ok in checks.items():
            if not ok:
                raise GenloomError(f"serve setting {name}={getattr(self, name)!r} is out of range; "
                                   f"use a positive value")
        from genloom.device import check_device_precision

        check_device_precision(self.device, self.precision)  # before any worker starts: one line with the fix


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    settings: ModelSettings = field(default_factory=ModelSettings)


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[ModelSpec, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1 << 20  # request bodies above this → 413
    admin_token: str | None = None  # bearer token for /admin/*; None disables the admin endpoints
    access_log: bool = True  # one JSON line per request on stderr
    restart_backoff_s: tuple[float, float] = (0.05, 5.0)  # first and largest delay before a worker restart
    drain_timeout_s: float = 30.0  # SIGTERM: wait this long for in-flight requests
    # status of an overload answer (always with Retry-After). 503 by default: the server as a whole is out of
    # capacity, which load balancers and proxies take as "try another replica"; 429 suits clients that back off
    # on rate limits (OpenAI SDKs retry both, with backoff).
    overload_status: int = 503

    def __post_init__(self) -> None:
        if self.overload_status not in (429, 503):
            raise GenloomError(f"overload_status must be 429 or 503, got {self.overload_status!r}")


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ModelSettings))


def _settings(base: ModelSettings, overrides: dict[str, Any], where: str) -> ModelSettings:
    unknown = set(overrides) - set(SETTING_NAMES)
    if unknown:
        raise GenloomError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(SETTING_NAMES)}")
    try:
        return dataclasses.replace(base, **overrides)
    except TypeError as e:
        raise GenloomError(f"{where}: {e}") from None


def load_config(*, models: list[str], config_file: Path | None = None,
                cli_settings: dict[str, Any] | None = None, cli_server: dict[str, Any] | None = None
                ) -> ServerConfig:
    """Merge defaults, an optional TOML file and command-line values into one validated ServerConfig."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise GenloomError(f"--config {config_file}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise GenloomError(f"--config {config_file}: not valid TOML ({e})") from None
    file_models: dict[str, dict[str, Any]] = dict(data.pop("models", {}))
    base = _settings(ModelSettings(), dict(data.pop("defaults", {})), "[defaults]")
    base = _settings(base, {k: v for k, v in (cli_settings or {}).items() if v is not None}, "command line")
    token_env = data.pop("admin_token_env", ADMIN_TOKEN_ENV)
    server = {k: v for k, v in data.items()}
    server.update({k: v for k, v in (cli_server or {}).items() if v is not None})
    specs: dict[str, ModelSpec] = {}
    for name, table in file_models.items():
        table = dict(table)
        check_name(name)
        if "path" not in table:
            raise GenloomError(f"[models.{name}] needs path = \"...\"")
        path = Path(table.pop("path"))
        specs[name] = ModelSpec(name, path, _settings(base, table, f"[models.{name}]"))
    for name, path in parse_model_args(models).items():  # the NAME=PATH rule of core/names.py
        settings = specs[name].settings if name in specs else base
        specs[name] = ModelSpec(name, path, settings)
    if not specs:
        raise GenloomError("no models to serve: give MODEL paths (NAME=PATH) or [models.NAME] in --config")
    for spec in specs.values():
        if not spec.path.is_file():
            raise GenloomError(f"model {spec.name!r}: {spec.path} is not a file; pass a .safetensors export")
    server.setdefault("admin_token", os.environ.get(token_env) or None)
    fields = {f.name for f in dataclasses.fields(ServerConfig)} - {"models"}
    unknown = set(server) - fields
    if unknown:
        raise GenloomError(f"--config: unknown server setting(s) {', '.join(sorted(unknown))}")
    if "restart_backoff_s" in server:
        server["restart_backoff_s"] = tuple(server["restart_backoff_s"])
    return ServerConfig(models=tuple(specs.values()), **server)
