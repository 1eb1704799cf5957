"""``genloom bench``: print the engine benchmark table (Markdown, or one JSON object with --json)."""
from __future__ import annotations

import argparse
import json

from genloom.errors import GenloomError
from genloom.options import add_device_options

GROUPS = ("vae", "gan", "lm", "train", "flow")


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmark inference backends against a naive PyTorch baseline",
                       description="VAE decode (both lecture decoders) and GAN batch 100 latency per backend, LM "
                                   "tokens/s with and without the KV cache, VAE training s/epoch; each row against "
                                   "naive eager PyTorch (training mode, autograd on) measured in the same process.")
    b.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}")
    b.add_argument("--runs", type=int, default=1000, help="timed calls per round for VAE rows (default 1000)")
    b.add_argument("--gan-runs", type=int, default=100, help="timed calls per round for the GAN row")
    b.add_argument("--lm-runs", type=int, default=3, help="timed generations per round for LM rows")
    b.add_argument("--flow-runs", type=int, default=5, help="timed 64-image calls per round for the flow row")
    b.add_argument("--train-steps", type=int, default=50, help="timed training steps per round")
    b.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    b.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's default)")
    b.add_argument("--backends", default="eager,onnx,bf16,int8,numpy",
                   help="image backends to time besides the naive baseline (compile is opt-in: slow to build)")
    add_device_options(b, note=" (off the CPU: the eager backend only, on the device)")
    b.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    b.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from genloom.engine import bench
    from genloom.engine.backends import FACTORIES

    from genloom.device import check_device_options

    check_device_options(args)  # an absent device: one line with the fix, before any model is built
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not only or only - set(GROUPS):
        raise GenloomError(f"--only takes a comma-separated subset of {','.join(GROUPS)}, got {args.only!r}")
    names = tuple(s.strip() for s in args.backends.split(",") if s.strip())
    unknown = set(names) - set(FACTORIES) - {"numpy"}
    if unknown:
        raise GenloomError(f"--backends: unknown {', '.join(sorted(unknown))}; choose from "
                           f"{', '.join([*FACTORIES, 'numpy'])}")
    for flag, v in (("--runs", args.runs), ("--gan-runs", args.gan_runs), ("--repeats", args.repeats),
                    ("--lm-runs", args.lm_runs), ("--train-steps", args.train_steps), ("--flow-runs", args.flow_runs)):
        if v < 1:
            raise GenloomError(f"{flag} must be ≥ 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise GenloomError(f"--threads must be ≥ 1, got {args.threads}")
    result = bench.run(only=only, runs=args.runs, gan_runs=args.gan_runs, repeats=args.repeats,
                       threads=args.threads, names=names, lm_runs=args.lm_runs, train_steps=args.train_steps,
                       flow_runs=args.flow_runs, device=args.device, precision=args.precision)
    print(json.dumps(result) if args.json else bench.markdown(result))
    return 0
