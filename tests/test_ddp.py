"""DDP training under ``torchrun --nproc_per_node 2`` on the CPU (gloo), on the tiny synthetic
avatar of tests/test_trainer.py.

Checks: only rank 0 writes (one config, one set of checkpoints, one TensorBoard log); two ranks
at per-rank batch b give the same weights as one process at batch 2b (the same global batch,
gradients averaged); a DDP run stopped and started again resumes exactly (bit for bit).

This file is also the worker script torchrun runs (``__main__`` below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
STEPS = 4


def _config(batch: int):
    from test_trainer import tiny_config

    # checkpoints at every 2nd step: rank 0 writes while rank 1 waits at the barrier
    return tiny_config(batch_size=batch, checkpoint_interval=2, keep_checkpoints=5,
                       log_interval=1, preview_interval=2, val_interval=2, val_items=2)


def _data():
    from test_trainer import SyntheticAvatar

    return SyntheticAvatar(8), SyntheticAvatar(2, offset=8)


def _worker(run_dir: str, steps: int, batch: int) -> None:
    from ram_avatar.training import train

    torch.set_num_threads(1)
    train_set, val_set = _data()
    summary = train(train_set, val_set, run_dir, _config(batch), steps=steps, device="cpu",
                    show_progress=False)
    rank = int(os.environ["RANK"])
    out = Path(run_dir).parent / f"{Path(run_dir).name}.rank{rank}.json"
    out.write_text(json.dumps({k: summary[k] for k in ("step", "start_step", "steps_run",
                                                       "world_size", "checkpoint")}))


def _torchrun(run_dir: Path, steps: int, batch: int) -> None:
    # one node on loopback: independent of whether this machine's host name resolves
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr",
           "127.0.0.1", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(run_dir), str(steps), str(batch)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]


def _weights(run_dir: Path) -> tuple[dict, dict]:
    from ram_avatar.training import latest_checkpoint
    from ram_avatar.training.checkpoint import read_checkpoint

    return read_checkpoint(latest_checkpoint(run_dir))


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu(tmp_path):
    from ram_avatar.training import list_checkpoints, train

    # --- one DDP run: 2 ranks x batch 2 = global batch 4
    ddp = tmp_path / "ddp"
    _torchrun(ddp, STEPS, batch=2)
    r0 = json.loads((tmp_path / "ddp.rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp.rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["step"] == r1["step"] == STEPS and r0["steps_run"] == STEPS

    # only rank 0 writes: one config, one checkpoint per interval, one TensorBoard log
    names = sorted(p.name for p in ddp.iterdir())
    assert names == ["checkpoints", "config.yaml", "previews", "tb"], names
    assert [p.name for p in list_checkpoints(ddp)] == ["step_00000002.safetensors",
                                                        "step_00000004.safetensors"]
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == [
        "step_00000002.safetensors", "step_00000004.safetensors"]
    assert len(list((ddp / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (ddp / "previews").iterdir()) == ["step_00000002.png",
                                                                     "step_00000004.png"]
    assert r0["checkpoint"].endswith("step_00000004.safetensors")

    # --- the same global batch in one process: batch 4
    single = tmp_path / "single"
    train_set, val_set = _data()
    s = train(train_set, val_set, single, _config(4), steps=STEPS, device="cpu",
              show_progress=False)
    assert s["world_size"] == 1 and s["step"] == STEPS
    td, md = _weights(ddp)
    ts, ms = _weights(single)
    params = [k for k in td if k.startswith("model.")]
    assert params and set(params) == {k for k in ts if k.startswith("model.")}
    # Two ranks average their float32 gradients with an all-reduce, one process sums the same
    # items in one batched op: rounding differences of ~1e-7. Adam divides by sqrt(v), which
    # blows such noise up to a full step (lr x multiplier) wherever the gradient is nearly 0:
    # a few background / texture texels the person covers in every frame. So: the generator
    # within 1e-5, at least 99 % of every tensor within 1e-5, losses within 1e-3 relative.
    sparse = ("model.background_logit", "model.texture.")
    for k in params:
        d = (td[k].float() - ts[k].float()).abs()
        if not k.startswith(sparse):
            assert float(d.max()) < 1e-5, (k, float(d.max()))
        assert float((d > 1e-5).float().mean()) < 0.01, (k, float((d > 1e-5).float().mean()))
    ld, ls = md["extra"]["losses"]["total"], ms["extra"]["losses"]["total"]
    assert abs(ld - ls) <= 1e-3 * abs(ls), (ld, ls)
    assert md["extra"]["val_psnr"] == pytest.approx(ms["extra"]["val_psnr"], abs=0.01)

    # --- stopped after 2 steps, started again: bit-for-bit the uninterrupted run
    resumed = tmp_path / "resumed"
    _torchrun(resumed, 2, batch=2)
    _torchrun(resumed, STEPS, batch=2)
    again = json.loads((tmp_path / "resumed.rank0.json").read_text())
    assert again["start_step"] == 2 and again["steps_run"] == STEPS - 2
    tr, mr = _weights(resumed)
    assert tr.keys() == td.keys()
    for key in td:  # weights, optimiser state, RNG states
        assert torch.equal(tr[key], td[key]), key
    assert mr["optimizer"] == md["optimizer"]


if __name__ == "__main__":  # torchrun worker: test_ddp.py RUN_DIR STEPS BATCH
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
