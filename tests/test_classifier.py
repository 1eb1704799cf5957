"""The shipped FID classifier: small, loads from its file alone, ≥ 91 % on the Fashion-MNIST test set; and the
classifier recipe trains through the shared Trainer."""
from __future__ import annotations

import json

import pytest
import torch

from genloom import export
from genloom.cli import main
from genloom.eval.fid import ASSET_DIR
from genloom.models.classifier import Classifier, ClassifierConfig

SHIPPED = ASSET_DIR / "fmnist_classifier.safetensors"


def test_shipped_classifier_is_small_and_accurate(fmnist) -> None:
    assert SHIPPED.stat().st_size < 2 * 1024 * 1024
    h = export.read_header(SHIPPED)
    assert h.kind == "classifier" and h.provenance["dataset"] == "fashion-mnist"
    model = export.load(SHIPPED)
    acc = model.accuracy(fmnist.test.images, fmnist.test.labels)
    assert acc >= 0.91, acc
    assert acc == pytest.approx(h.provenance["test_accuracy"], abs=1e-4)  # the file's own claim holds


def test_features_shape_and_eval_mode_determinism() -> None:
    m = Classifier(ClassifierConfig()).eval()
    x = torch.rand(3, 1, 28, 28)
    assert m.features(x).shape == (3, 128) and m(x).shape == (3, 10)
    torch.testing.assert_close(m.features(x), m.features(x))  # no dropout at eval
    with pytest.raises(TypeError, match="does not generate"):
        m.generate(1)


def test_classifier_recipe_trains(tmp_path, capsys, fmnist) -> None:
    out = tmp_path / "clf"
    rc = main(["train", "classifier", "--subset", "2000", "--epochs", "1", "--batch-size", "64", "--val-batches", "1",
               "--out", str(out),
               "--threads", "1", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.6  # one epoch on 2,000 images: far above chance (0.1)
    assert export.read_header(out / "model.safetensors").provenance["test_accuracy"] == summary["test_accuracy"]


def test_bad_config_rejected() -> None:
    with pytest.raises(ValueError):
        ClassifierConfig(dropout=1.0)
    with pytest.raises(ValueError):
        ClassifierConfig(image_shape=(3, 32, 32))
