"""The train CLI's conventions: --config TOML (+ the resolved OUT/config.toml that repeats a run), --resume with
or without a path, TensorBoard event files read back, checkpoints every N steps."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from genloom import cli
from genloom.training.metrics import read_metrics

pytestmark = pytest.mark.timeout(180)


def tiny_vae(idx_dir: Path) -> list[str]:
    return ["--data", str(idx_dir), "--latent", "4", "--enc-hidden", "32", "--dec-hidden", "32",
            "--batch-size", "64", "--log-every", "1", "--threads", "1", "--no-progress"]


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]


def test_config_file_flags_win_unknown_keys_and_resolved_config_repeats_the_run(idx_dir: Path, tmp_path: Path,
                                                                               capsys) -> None:
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('family = "vae"\nepochs = 2\nlr = 3e-3\nbatch-size = 32\nseed = 7\n'
                        'schedule = "cosine"\n', encoding="utf-8")
    a = tmp_path / "a"
    # the command line wins over the file (batch size 64, not 32)
    assert cli.main(["train", "--config", str(run_toml), *tiny_vae(idx_dir), "--out", str(a)]) == 0
    cfg = (a / "config.toml").read_text()
    assert 'family = "vae"' in cfg and "lr = 0.003" in cfg and "batch_size = 64" in cfg and "seed = 7" in cfg
    assert "epochs = 2" in cfg and 'schedule = "cosine"' in cfg and "latent = 4" in cfg
    first = losses(a)
    assert len(first) == 2 * 9  # 540 training images / 64, two epochs

    b = tmp_path / "b"  # no FAMILY: the file names it; --out on the command line wins over the file's
    assert cli.main(["train", "--config", str(a / "config.toml"), "--out", str(b)]) == 0
    assert losses(b) == first  # the same per-step losses
    assert (b / "config.toml").read_text() == cfg.replace(str(a), str(b))
    capsys.readouterr()

    bad = tmp_path / "bad.toml"
    bad.write_text('family = "vae"\nlearning_rate = 1e-3\n', encoding="utf-8")
    assert cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err and str(bad) in err and err.count("\n") == 1
    bad.write_text('family = "vae"\nepochs = "two"\n', encoding="utf-8")
    with pytest.raises(SystemExit):  # argparse checks the type as for the flag
        cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "c")])
    assert "--epochs: invalid int value: 'two'" in capsys.readouterr().err
    assert cli.main(["train", "lm", "--config", str(a / "config.toml")]) == 2
    assert "is for family 'vae', not 'lm'" in capsys.readouterr().err


def test_step_checkpoints_and_resume_with_and_without_a_path(idx_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "vae", *tiny_vae(idx_dir), "--out", str(out), "--no-tensorboard"]
    assert cli.main([*args, "--steps", "12", "--checkpoint-steps", "2", "--keep-checkpoints", "2"]) == 0
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-00000010.pt", "step-00000012.pt"]
    assert not list(out.glob("events.out.tfevents.*"))  # --no-tensorboard
    full = losses(out)
    capsys.readouterr()

    # --resume without a path: OUT/checkpoints/last.pt, and it says so
    assert cli.main([*args, "--steps", "14", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"Resumed from {ck / 'last.pt'} (step 12, epoch 1" in err
    assert losses(out)[:12] == full and [s for s, _ in losses(out)] == list(range(1, 15))

    # --resume PATH: an older step checkpoint, into a new run directory
    other = tmp_path / "other"
    assert cli.main(["train", "vae", *tiny_vae(idx_dir), "--out", str(other), "--steps", "12",
                     "--resume", str(ck / "step-00000010.pt")]) == 0
    assert f"Resumed from {ck / 'step-00000010.pt'} (step 10" in capsys.readouterr().err
    assert [s for s, _ in losses(other)] == [11, 12] and losses(other) == full[10:]
    assert cli.main(["train", "vae", *tiny_vae(idx_dir), "--out", str(other), "--steps", "12",
                     "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def _records(path: Path):
    """TFRecord framing: u64 length, u32 masked CRC of it, the bytes, u32 masked CRC of them."""
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        yield data[i + 12:i + 12 + n]
        i += 12 + n + 4


def test_tensorboard_event_file_has_scalars_images_and_text(idx_dir: Path, tmp_path: Path, capsys) -> None:
    from tensorboardX.proto.event_pb2 import Event  # the protobuf schema TensorBoard reads

    out = tmp_path / "run"
    assert cli.main(["train", "vae", *tiny_vae(idx_dir), "--epochs", "2", "--grad-clip", "5",
                     "--out", str(out)]) == 0
    files = list(out.glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[tuple[int, int, int]]] = {}
    for raw in _records(files[0]):
        ev = Event.FromString(raw)
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
            elif v.HasField("image"):
                images.setdefault(v.tag, []).append((ev.step, v.image.width, v.image.height))
                assert v.image.encoded_image_string.startswith(b"\x89PNG")
    recs = read_metrics(out / "metrics.jsonl")
    train = [r for r in recs if r["type"] == "train"]
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    for tag in ("train/lr", "train/grad_norm", "train/samples_per_s", "val/val_loss"):
        assert tag in scalars, sorted(scalars)
    assert [s for s, _ in scalars["val/val_loss"]] == [r["step"] for r in recs if r["type"] == "val"] == [9, 18]
    assert [(s, w > 100, h > 100) for s, w, h in images["samples"]] == [(9, True, True), (18, True, True)]


def test_tensorboard_lm_text_samples(tmp_path: Path) -> None:
    from tensorboardX.proto.event_pb2 import Event

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"ROMEO:\nline {i} of a short play.\n\n" for i in range(200)), encoding="utf-8")
    out = tmp_path / "lm"
    assert cli.main(["train", "lm", "--data", str(corpus), "--steps", "4", "--val-every", "2", "--batch-size", "4",
                     "--block-size", "16", "--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--threads", "1",
                     "--no-progress", "--out", str(out)]) == 0
    texts = []
    for raw in _records(next(out.glob("events.out.tfevents.*"))):
        ev = Event.FromString(raw)
        for v in ev.summary.value:
            if v.metadata.plugin_data.plugin_name == "text":
                texts.append((ev.step, v.tensor.string_val[0].decode()))
    assert [s for s, _ in texts] == [2, 4] and all(len(t) > 200 for _, t in texts)
