"""The EMA of the renderer's weights: its warm-up, and the loader that makes it the run's
renderer (``optim.ema_warmup``, opt-in; issue 10, round 4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ram_avatar.cli import main
from ram_avatar.errors import CheckpointError
from ram_avatar.io.checkpoint import aux_checkpoint_path, read_checkpoint
from ram_avatar.io.subject import Subject
from ram_avatar.training.config import OptimConfig, get_preset
from ram_avatar.training.state import TrainingState

pytestmark = pytest.mark.usefixtures("one_thread")


def _ema_after(warmup: bool, steps: int) -> float:
    """EMA of a scalar weight that is 1.0 from step 0 on, starting from 0.0."""
    renderer, ema = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.ones_(renderer.weight)
    nn.init.zeros_(ema.weight)
    fake = SimpleNamespace(ema=ema, model=SimpleNamespace(renderer=renderer),
                           config=SimpleNamespace(optim=OptimConfig(ema_decay=0.999,
                                                                    ema_warmup=warmup)))
    for step in range(steps):
        TrainingState.update_ema(fake, step)
    return float(ema.weight.detach())


def test_warmup_decay_follows_num_updates():
    # step 0: decay min(0.999, 1/10) = 0.1 -> 0.9 of the new weights
    assert _ema_after(True, 1) == pytest.approx(0.9)
    # steps 0, 1: 1 - 0.1 * 2/11
    assert _ema_after(True, 2) == pytest.approx(1 - 0.1 * 2 / 11)
    # after 1000 steps the warmed-up average holds < 1 % of the start, the fixed one 37 %
    assert 1 - _ema_after(True, 1000) < 0.01
    assert 1 - _ema_after(False, 1000) == pytest.approx(0.999 ** 1000, rel=1e-3)


def test_warmup_is_opt_in():
    # measured on taiji (closing note, issue 10 round 4): +0.18 dB masked PSNR but a driven
    # sharpness ratio below the 0.6 target, so no preset turns it on
    assert get_preset("cpu-256").optim.ema_decay == 0.999
    assert not get_preset("cpu-256").optim.ema_warmup
    assert not OptimConfig().ema_warmup       # old configs keep a fixed decay and raw weights


def _train(subject, run, *sets):
    from tiny_subject import TINY_TRAIN

    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu", "--steps", "3",
            "--run", run]
    for s in [*TINY_TRAIN, *sets]:
        argv += ["--set", s]
    assert main(argv) == 0
    return Subject(subject).run(run)


def test_run_renderer_is_its_ema_only_when_trained_with_warmup(tmp_path, anny_body):
    from tiny_subject import write_tiny_subject

    subject = write_tiny_subject(tmp_path / "s", anny_body, T=12)
    warm = _train(subject, "warm", "optim.ema_decay=0.999", "optim.ema_warmup=true")
    fixed = _train(subject, "fixed", "optim.ema_decay=0.999")
    none = _train(subject, "none")

    model, info = warm.load_renderer()
    assert info["weights"] == "ema"
    aux, _ = read_checkpoint(aux_checkpoint_path(info["checkpoint"]))
    main_t, _ = read_checkpoint(info["checkpoint"])
    name = next(k for k in model.state_dict() if k.startswith("generator.") and k.endswith("weight"))
    assert torch.equal(model.state_dict()[name], aux[f"model.ema.{name}"])
    assert not torch.equal(aux[f"model.ema.{name}"], main_t[f"model.{name}"])
    raw, info_raw = warm.load_renderer(weights="raw")
    assert info_raw["weights"] == "raw"
    assert torch.equal(raw.state_dict()[name], main_t[f"model.{name}"])

    # a fixed-decay EMA (runs from before the switch) is saved but not loaded unless asked
    assert fixed.load_renderer()[1]["weights"] == "raw"
    assert fixed.load_renderer(weights="ema")[1]["weights"] == "ema"
    assert none.load_renderer()[1]["weights"] == "raw"
    with pytest.raises(CheckpointError, match="no EMA weights"):
        none.load_renderer(weights="ema")

    # evaluate says which weights it measured
    from ram_avatar.eval.evaluate import evaluate_subject

    assert evaluate_subject(subject, "warm", device="cpu")["weights"] == "ema"
