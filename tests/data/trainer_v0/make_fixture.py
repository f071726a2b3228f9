"""Writes tests/data/trainer_v0/: a tiny run trained by the trainer of commit 6dbface (before the
issue-11 restructure of training/), for the compatibility and parity tests (tests/test_train_compat.py).

Run from a checkout of that commit (``git worktree add /tmp/oldmain 6dbface``)::

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/oldmain:/tmp/oldmain/tests \
        python tests/data/trainer_v0/make_fixture.py OUT_DIR

It writes into OUT_DIR:
    run/             config.yaml (flat keys), checkpoints/step_00000002 + step_00000004 (main + aux:
                     discriminator, EMA), split.json: the cpu-256 renderer shrunk to 32x32, trained
                     4 steps (2 + 2, resumed) on 8 items of a tiny subject (tests/tiny_subject.py)
    items.npz        those items (train_*/val_* arrays, every key the trainer reads) and the baked
                     RGB texture: training from them needs no map rendering
    scalars.json     every TensorBoard scalar of the two calls {tag: [[step, value], ...]}
    renders.npz      the step-4 checkpoint's outputs (rgb, alpha) on the val items, mean latent,
                     with the plain and the EMA weights
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

#: the cpu-256 preset (full renderer, texture_rgb, augment, GAN, EMA) shrunk to 32x32
TINY_FULL = ["model.resolution=32", "model.texture_size=32", "model.texture_levels=2",
             "model.base_channels=8", "model.max_channels=16", "model.style_dim=16",
             "model.latent_dim=8", "model.attention_channels=8", "model.branch_channels=4",
             "model.branch_hidden=4", "disc_base_channels=4", "disc_max_channels=8",
             "vgg_weight=0.03", "hand_weight=0.1",
             "hand_loss=l1", "hand_crop=16", "gan_ramp_every=1", "r1_interval=2",
             "batch_size=2", "log_interval=1", "preview_interval=1000", "val_interval=1000",
             "checkpoint_interval=2", "val_items=2", "keep_checkpoints=3", "val_fraction=0.25"]


class ItemsDataset(torch.utils.data.Dataset):
    """Items held in memory (dicts of tensors / ints), with the sequence's ``num_frames``."""

    def __init__(self, items: list[dict], num_frames: int) -> None:
        self.items, self.num_frames = items, num_frames

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def main(out: Path) -> None:
    from tiny_subject import write_tiny_subject

    from ram_avatar.body import load_body_model
    from ram_avatar.training.run import prepare_training
    from ram_avatar.training.trainer import train

    out.mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    shutil.rmtree(work, ignore_errors=True)
    body = load_body_model("anny")
    subject = write_tiny_subject(work / "subject", body, T=12)
    setup = prepare_training(subject, "cpu-256", "fx", TINY_FULL)
    keys = None
    arrays = {}
    for part, ds in (("train", setup.train_set), ("val", setup.val_set)):
        items = [ds[i] for i in range(len(ds))]
        keys = sorted(items[0])
        for k in keys:
            arrays[f"{part}_{k}"] = np.stack([np.asarray(it[k]) for it in items])
    arrays["texture"] = setup.texture.numpy()
    arrays["num_frames"] = np.array(setup.seq.num_frames)
    np.savez_compressed(out / "items.npz", **arrays)
    print("train items", len(setup.train_set), "val", len(setup.val_set), "keys", keys)

    train_set, val_set = load_items(out / "items.npz")
    scalars: dict[str, list] = {}
    import torch.utils.tensorboard as tb

    class Writer(tb.SummaryWriter):
        def add_scalar(self, tag, value, step=None, *a, **k):
            scalars.setdefault(tag, []).append([int(step), float(value)])
            return super().add_scalar(tag, value, step, *a, **k)

    tb.SummaryWriter = Writer
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    texture = torch.from_numpy(arrays["texture"])
    for steps in (2, 4):
        s = train(train_set, val_set, run, setup.config, steps=steps, device="cpu",
                  show_progress=False, init_texture=texture)
        print(steps, s["losses"], s["val_psnr"])
    shutil.copy(setup.run.split_path, run / "split.json")
    shutil.rmtree(run / "tb", ignore_errors=True)
    shutil.rmtree(run / "previews", ignore_errors=True)
    (out / "scalars.json").write_text(json.dumps(scalars, indent=0))

    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.training.checkpoint import latest_checkpoint, load_checkpoint
    from ram_avatar.training.config import load_config
    from ram_avatar.training.trainer import load_ema_weights

    config = load_config(run / "config.yaml")
    ckpt = latest_checkpoint(run)
    renders = {}
    batch = torch.utils.data.default_collate([val_set[i] for i in range(len(val_set))])
    for name in ("plain", "ema"):
        model = AvatarRenderer(config.model)
        load_checkpoint(ckpt, model=model)
        if name == "ema":
            assert load_ema_weights(ckpt, model)
        model.eval()
        with torch.no_grad():
            o = model.forward_batch(batch, None)
        renders[f"{name}_rgb"] = o["rgb"].numpy()
        renders[f"{name}_alpha"] = o["alpha"].numpy()
    np.savez_compressed(out / "renders.npz", **renders)
    shutil.rmtree(work, ignore_errors=True)
    print("sizes", {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()})


def load_items(path: Path) -> tuple[ItemsDataset, ItemsDataset]:
    """(train, val) :class:`ItemsDataset` of ``items.npz``."""
    data = np.load(path)
    n_frames = int(data["num_frames"])
    sets = []
    for part in ("train", "val"):
        keys = [k[len(part) + 1:] for k in data.files if k.startswith(part + "_")]
        n = len(data[f"{part}_frame_index"])
        items = []
        for i in range(n):
            it = {}
            for k in keys:
                v = data[f"{part}_{k}"][i]
                it[k] = int(v) if v.ndim == 0 else torch.from_numpy(np.array(v))
            items.append(it)
        sets.append(ItemsDataset(items, n_frames))
    return sets[0], sets[1]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
