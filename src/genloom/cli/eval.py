"""``genloom eval MODEL``: VAE test ELBO / IWAE (+ FID with --fid), GAN FID, LM loss and bits per char."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.export import ModelFile
from genloom.models.flow import SAMPLERS
from genloom.options import add_device_options


def register(sub: Any) -> None:
    e = sub.add_parser("eval", help="evaluate a model file on held-out data",
                       description="VAE: test-set negative ELBO and IWAE bound (nats/image). "
                                   "LM: next-char loss and bits per char.")
    e.add_argument("model", type=Path, help="a genloom .safetensors file")
    e.add_argument("--dataset", default=None, help="image dataset (default: the one in the file's provenance)")
    e.add_argument("--data", type=Path, default=None, help="directory with the IDX files")
    e.add_argument("--iwae-k", type=int, default=100, help="VAE: importance samples for the IWAE bound (0 = off)")
    e.add_argument("--seed", type=int, default=0, help="seed for the Monte-Carlo estimates")
    e.add_argument("--text", type=Path, default=None, help="LM: score this UTF-8 file")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.add_argument("--fid", action="store_true",
                   help="image models: add the FID of generated samples vs the test set (always on for a GAN)")
    e.add_argument("--classifier", type=Path, default=None,
                   help="FID feature classifier (default: $GENLOOM_CLASSIFIER, then the one shipped with genloom)")
    e.add_argument("--fid-samples", type=int, default=10_000, help="generated samples for the FID (default 10000)")
    add_device_options(e, note=" (the Monte-Carlo noise is drawn on the CPU, so a seed gives the same estimate on "
                       "every device; --precision auto scores in fp32, bf16/fp16 under autocast)")
    e.add_argument("--steps", type=int, default=None, help="flow: ODE steps (default: the file's)")
    e.add_argument("--guidance", type=float, default=None,
                   help="flow: guidance w (0 = unconditional; default: the file's)")
    e.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="flow: sampler (default: the file's; shortcut: a shortcut model's learned steps)")
    e.set_defaults(func=_cmd_eval)


def evaluate_file(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation of the model file at ``path`` with the options of ``genloom eval`` in ``args``."""
    from genloom.device import check_device_precision

    h = export.read_header(path)
    evaluators = {"vae": evaluate_vae, "gan": evaluate_gan, "lm": evaluate_lm, "flow": evaluate_flow}
    if h.kind not in evaluators:
        raise GenloomError(f"`genloom eval` does not support models of kind {h.kind!r}")
    device, precision = getattr(args, "device", "cpu"), getattr(args, "precision", "auto")
    check_device_precision(device, precision)
    if precision not in ("bf16", "fp16"):
        return evaluators[h.kind](args, h)  # auto and fp32: the scores in fp32
    from genloom.device import resolve_device

    with torch.autocast(resolve_device(device).type, torch.bfloat16 if precision == "bf16" else torch.float16):
        return evaluators[h.kind](args, h)


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_file(args.model, args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


# ---- images ----------------------------------------------------------------------------------------------------

def _load(args: argparse.Namespace, header: ModelFile) -> torch.nn.Module:
    from genloom.device import resolve_device

    return export.load(header.path).to(resolve_device(getattr(args, "device", "cpu")))


def _test_split(args: argparse.Namespace, header: ModelFile):
    from genloom.data.images import load_images

    dataset = args.dataset or header.provenance.get("dataset") or "fashion-mnist"
    return load_images(dataset, args.data).test


def evaluate_vae(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    from genloom.eval.elbo import evaluate_vae as nelbo

    if args.iwae_k < 0:
        raise GenloomError("--iwae-k must be ≥ 0")
    model = _load(args, header)
    result = nelbo(model, _test_split(args, header), iwae_k=args.iwae_k, seed=args.seed)
    if getattr(args, "fid", False):  # the same FID evaluator as the GAN's, so the families compare
        result.update(fid_result(args, header))
    return result


def _dataset(args: argparse.Namespace, header: ModelFile) -> str:
    return getattr(args, "dataset", None) or header.provenance.get("dataset") or "fashion-mnist"


def engine_samples(engine: Any, n: int, seed: int, *, chunk: int = 1024) -> np.ndarray:
    """``engine.sample(n, seed=seed)`` for any n: (n, 28, 28) float32 in [0, 1] — the same noise draw and class
    cycle (``engine/base.py`` ``prior_inputs``), decoded ``chunk`` rows at a time."""
    from genloom.engine.base import prior_inputs

    z, y = prior_inputs(engine, n, seed)
    return np.concatenate([engine.decode(z[i:i + chunk], labels=None if y is None else y[i:i + chunk])
                           for i in range(0, n, chunk)])


def fid_result(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    """{"fid", "fid_samples", "fid_classifier"} for the model file against the test split of its dataset. The
    samples are the engine's: ``load(path).sample(n, seed=seed)`` — the images ``genloom sample -n N --seed S``
    writes, from the one noise source every path uses — drawn as one noise array and decoded in chunks, since
    10,000 is past one sample request's limit (``core/requests.py`` max_n)."""
    from genloom.data.images import load_images
    from genloom.engine import load
    from genloom.engine.base import MAX_N
    from genloom.eval.fid import features, feature_stats, find_classifier, frechet_distance, load_classifier, \
        real_stats

    n = getattr(args, "fid_samples", None) or 10_000
    if not 2 <= n <= MAX_N:
        raise GenloomError(f"--fid-samples must be between 2 and {MAX_N} (10000 is the standard), got {n}")
    dataset = _dataset(args, header)
    cpath = find_classifier(getattr(args, "classifier", None), dataset=dataset)
    classifier = load_classifier(cpath, dataset=dataset)
    test = load_images(dataset, getattr(args, "data", None)).test
    images = engine_samples(load(header.path, device=getattr(args, "device", "cpu"),
                                 precision=getattr(args, "precision", "auto")), n, getattr(args, "seed", 0))
    with torch.inference_mode():
        mu_g, s_g = feature_stats(features(classifier, torch.from_numpy(images)))
    value = frechet_distance(*real_stats(cpath, classifier, test.images), mu_g, s_g)
    return {"fid": value, "fid_samples": n, "fid_classifier": cpath.name}


def evaluate_gan(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    """GAN: the FID of its samples (10,000 by default) against the test set."""
    return fid_result(args, header)  # sampled by the engine on --device


def evaluate_flow(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    """Flow: FID at the given sampler settings and, for a conditional model with guidance > 0, the fraction of
    samples the FID classifier labels as the requested class."""
    from genloom.data.images import load_images
    from genloom.eval.fid import find_classifier, load_classifier, real_stats
    from genloom.eval.flow import fid_and_accuracy
    from genloom.models.flow import check_sampler, network_evaluations

    n = getattr(args, "fid_samples", None) or 10_000
    if n < 2:
        raise GenloomError(f"--fid-samples must be ≥ 2 (10000 is the standard), got {n}")
    model = export.load(header.path)
    c = model.config
    steps = c.sample_steps if getattr(args, "steps", None) is None else args.steps
    guidance = c.guidance if getattr(args, "guidance", None) is None else args.guidance
    sampler = getattr(args, "sampler", None) or c.sampler
    if not 1 <= steps <= 256:
        raise GenloomError(f"--steps must be between 1 and 256, got {steps}")
    if not 0 <= guidance <= 20:
        raise GenloomError(f"--guidance must be between 0 and 20, got {guidance}")
    try:
        check_sampler(c, sampler, steps)
    except ValueError as e:
        raise GenloomError(f"--sampler {sampler} --steps {steps}: {e}") from None
    dataset = _dataset(args, header)
    cpath = find_classifier(getattr(args, "classifier", None), dataset=dataset)
    classifier = load_classifier(cpath, dataset=dataset)
    test = load_images(dataset, getattr(args, "data", None)).test
    res = fid_and_accuracy(model, classifier, real_stats(cpath, classifier, test.images), n=n, seed=args.seed,
                           steps=steps, guidance=guidance, sampler=sampler)
    return {**res, "fid_samples": n, "fid_classifier": cpath.name, "sampler": sampler, "steps": steps,
            "guidance": guidance, "guidance_interval": [c.guidance_t_min, c.guidance_t_max],
            "network_evaluations": network_evaluations(steps, sampler)}


# ---- text -------------------------------------------------------------------------------------------------------

def _eval_text(args: argparse.Namespace, header: ModelFile) -> tuple[str, bool]:
    """The text to score: --text FILE (whole file), else the validation split of the training corpus."""
    from genloom.data.text import load_text, resolve_corpus_ref

    if args.text is not None:
        return load_text(args.text), False
    data = header.provenance.get("data")
    found = resolve_corpus_ref(data) if data else None  # "genloom:tinyshakespeare.txt" = the shipped corpus
    if found is not None:
        return load_text(found), True
    raise GenloomError("give --text FILE (a UTF-8 text to score); the training corpus named in the model file "
                       f"({data or 'none'}) is not available here")


def evaluate_lm(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    from genloom.data.text import split_tokens
    from genloom.eval.lm import evaluate_lm as score

    text, is_corpus = _eval_text(args, header)
    model = _load(args, header)
    tokens = torch.tensor(model.encode(text, what=str(args.text or "the corpus")), dtype=torch.long)
    if is_corpus:
        tokens = split_tokens(tokens)[1]  # the validation split the model was selected on
    res = score(model, tokens, batch_size=max(1, 8192 // model.config.block_size))
    return {**res, "text": str(args.text) if args.text is not None else "validation split",
            "block_size": model.config.block_size}
