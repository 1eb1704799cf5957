"""A non-editable install works from any directory: `pip install .` into a new venv, then
`cd /tmp && genloom train lm --preset quick --steps 20 --out x` — the corpus, the playground and the shipped
classifier must come from inside the installed package, not from the repository checkout.

The new venv sees this environment's third-party packages (torch, numpy, …) through a path entry, so the test
needs no network and no multi-GB download; genloom itself is built from the checkout as a wheel and installed
into the new venv, and the test checks that the `genloom` it runs is that copy, not `src/`."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def test_pip_install_then_train_lm_from_another_directory(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    new_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    # third-party dependencies from this environment: a plain path entry (its .pth files — among them the
    # editable genloom's — are not processed, so `import genloom` can only find the copy installed below)
    (new_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    src = tmp_path / "checkout"  # build from a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--quiet", "--target", str(new_site), str(src)],
                         capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, pip.stderr[-2000:]

    work = tmp_path / "elsewhere"  # an empty directory with nothing beside it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GENLOOM_DATA")}
    where = subprocess.run([str(py), "-c", "import genloom; print(genloom.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(new_site), f"imported genloom from {where}, not the installed copy"

    run = subprocess.run([str(py), "-m", "genloom", "train", "lm", "--preset", "quick", "--steps", "20",
                          "--out", "x", "--threads", "1", "--no-progress", "--no-tensorboard"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 20
    model = work / "x" / "model.safetensors"
    assert model.is_file() and (work / summary["model"]).resolve() == model.resolve()
    ev = subprocess.run([str(py), "-m", "genloom", "sample", str(model), "--prompt", "ROMEO:", "--max-new-tokens",
                         "20", "--seed", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0 and ev.stdout.startswith("ROMEO:"), ev.stderr[-2000:]
