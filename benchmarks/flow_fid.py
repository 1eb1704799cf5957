"""FID (and class accuracy) of flow model files at several sampler settings, plus the autoencoder's floor.

    python benchmarks/flow_fid.py RUN/model.safetensors [more files] --n 2000 \
        --settings heun:8:1 euler:4:0 heun:2:0 heun:8:2 [--autoencoder RUN/autoencoder/model.safetensors]

Each setting is sampler:steps:guidance[:tmin-tmax] (guidance 0 = unconditional; tmin-tmax the guidance interval,
default the file's). Prints one JSON line per file and setting.
The autoencoder floor is the FID of test-set reconstructions decode(μ(x)): no sampler can do better than it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genloom import export
from genloom.data.images import load_images
from genloom.eval.fid import feature_stats, features, find_classifier, frechet_distance, load_classifier, real_stats
from genloom.eval.flow import fid_and_accuracy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="*", type=Path)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--settings", nargs="+", default=["heun:8:1"])
    p.add_argument("--autoencoder", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cpath = find_classifier()
    clf = load_classifier(cpath)
    test = load_images("fashion-mnist").test
    real = real_stats(cpath, clf, test.images)
    if a.autoencoder:
        ae = export.load(a.autoencoder)
        with torch.inference_mode():
            x = test.images[:a.n].float().div(255).unsqueeze(1)
            rec = torch.cat([ae.decode(ae.encode(x[i:i + 500])[0]) for i in range(0, len(x), 500)])
        mu, s = feature_stats(features(clf, rec))
        print(json.dumps({"file": str(a.autoencoder), "reconstruction_fid": frechet_distance(*real, mu, s),
                          "n": len(x)}), flush=True)
    for f in a.files:
        model = export.load(f)
        prov = export.read_header(f).provenance
        for s in a.settings:
            sampler, steps, w, *rest = s.split(":")
            interval = tuple(float(v) for v in rest[0].split("-")) if rest else None
            t0 = time.monotonic()
            r = fid_and_accuracy(model, clf, real, n=a.n, sampler=sampler, steps=int(steps), guidance=float(w),
                                 guidance_interval=interval)
            used = interval or (model.config.guidance_t_min, model.config.guidance_t_max)
            print(json.dumps({"file": str(f), "run_seconds": prov.get("run_seconds", prov.get("total_train_seconds")),
                              "sampler": sampler, "steps": int(steps), "guidance": float(w),
                              "guidance_interval": list(used), "n": a.n, **r,
                              "eval_seconds": round(time.monotonic() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
