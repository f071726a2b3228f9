"""The held-out split (ram_avatar.io.split) and its one owner, the run (ram_avatar.io.subject):
decided once by ``train``, written to ``runs/<run>/split.json`` before training, read by
evaluate, export, drive and the live runtime; older run folders still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ram_avatar.io.split import (Split, SplitError, decide_split, read_split, segment_block,
                                 segment_scores, tail_split)
from ram_avatar.io.subject import Run, Subject

# --------------------------------------------------------------------------------------------
# tail: today's rule, identical indices


@pytest.mark.parametrize("T,fraction", [(412, 0.1), (412, 0.2), (30, 0.1), (7, 0.5), (10, 0.0), (5, 0.01)])
def test_tail_split_is_the_training_rule(T, fraction):
    """The rule, written out: the last round(T * fraction) frames (at least one when the
    fraction is > 0) are held out; invalid frames are dropped from both sides. The texture
    bake's default and an aligner fitted before its run's split was recorded read it too."""
    from ram_avatar.motion.mda import training_split
    from ram_avatar.render.texture_bake import default_training_frames

    rng = np.random.default_rng(T)
    valid = rng.random(T) > 0.15
    seq = type("Seq", (), {"num_frames": T, "valid": valid})()
    n_val = max(1, round(T * fraction)) if fraction > 0 else 0
    s = tail_split(valid, fraction)
    assert s.train.tolist() == [t for t in range(T - n_val) if valid[t]]
    assert s.val.tolist() == [t for t in range(T - n_val, T) if valid[t]]
    np.testing.assert_array_equal(default_training_frames(seq, fraction), s.train)
    legacy = training_split("unused", seq, None, fraction)
    np.testing.assert_array_equal(legacy.train, s.train)
    np.testing.assert_array_equal(legacy.val, s.val)
    assert s.method == "tail" and s.guard == 0 and s.num_frames == T
    assert not set(s.train) & set(s.val) and valid[s.train].all() and valid[s.val].all()


# --------------------------------------------------------------------------------------------
# segment: the block of poses farthest from the rest


def _brute_scores(dist, valid, n, g):
    T = len(valid)
    out = []
    for s in range(T - n + 1):
        rest = [u for u in range(T) if valid[u] and not (s - g <= u < s + n + g)]
        inside = [t for t in range(s, s + n) if valid[t]]
        if not inside:
            out.append(-np.inf)
        elif not rest:
            out.append(np.inf)
        else:
            out.append(np.mean([min(dist[t, u] for u in rest) for t in inside]))
    return np.array(out)


def test_segment_scores_match_brute_force():
    rng = np.random.default_rng(1)
    T = 37
    joints = rng.normal(size=(T, 5, 3))
    dist = np.linalg.norm(joints[:, None] - joints[None], axis=-1).mean(-1)
    valid = rng.random(T) > 0.2
    valid[10:14] = False  # a block with no valid frame
    for n, g in ((4, 0), (4, 2), (1, 3), (9, 5)):
        np.testing.assert_allclose(segment_scores(dist, valid, n, g), _brute_scores(dist, valid, n, g),
                                   rtol=1e-12)


def _walk(T, J=20, seed=0):
    """Smooth periodic 'motion' (T, J, 3): every pose recurs, so each frame has near neighbours
    outside any block (as in a real capture where movements repeat)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=0.3, size=(J, 3))
    amp = rng.normal(scale=0.1, size=(J, 3))
    ph = 2 * np.pi * np.arange(T)[:, None, None] / 25.0
    return base + amp * np.sin(ph + rng.uniform(0, 2 * np.pi, size=(J, 3)))


@pytest.mark.parametrize("start,guard", [(120, 5), (0, 5), (180, 0), (57, 12)])
def test_segment_finds_the_planted_block(start, guard):
    T, n = 200, 20
    joints = _walk(T)
    joints[start:start + n, :6] += np.array([0.0, -0.45, 0.1])  # arms raised: never seen elsewhere
    valid = np.ones(T, bool)
    a, b, scores = segment_block(joints, valid, 0.1, guard)
    assert (a, b) == (start, start + n)
    assert scores.shape == (T - n + 1,)
    # the planted block is far from everything else; ordinary blocks have near neighbours
    assert scores[start] > 5 * np.median(scores)


def test_segment_ignores_the_planted_block_neighbours_and_invalid_frames():
    T, n = 200, 20
    joints = _walk(T, seed=3)
    joints[100:120, :6] += 0.5
    valid = np.ones(T, bool)
    valid[100:105] = False      # the planted block starts with unusable frames
    a, b, _ = segment_block(joints, valid, 0.1, 5)
    assert a >= 100 - 5 and b <= 120 + 5 and a <= 105  # covers the valid planted frames 105..119
    with pytest.raises(SplitError, match="no valid training frame"):
        segment_block(joints[:4], np.ones(4, bool), 0.5, 4)


def _memory_seq(body, T=60, fps=20.0, raised=(30, 36), invalid=()):
    from tiny_subject import tiny_poses

    from ram_avatar.body.base import BodyParams
    from ram_avatar.capture.keypoints import Keypoints2D
    from ram_avatar.io.sequence import FittedSequence

    arr = tiny_poses(body, T, raised)
    valid = np.ones(T, bool)
    valid[list(invalid)] = False
    return FittedSequence(params=BodyParams.from_numpy(arr), keypoints=Keypoints2D.empty(T), valid=valid,
                          face_local=np.zeros((T, 478, 3), np.float32),
                          manifest={"fps": fps, "body_model": {"name": "anny"}})


def test_decide_segment_on_body_model_joints(anny_body):
    """Raised arms during frames 30-35 of a 60-frame swing: the segment split holds them out
    and training skips them plus the guard band (0.5 s = 10 frames, capped at the block: 6)."""
    seq = _memory_seq(anny_body, invalid=(3,))
    s = decide_split(seq, "segment", 0.1, body=anny_body)
    assert s.method == "segment" and s.info["block"] == [30, 36] and s.guard == 6
    np.testing.assert_array_equal(s.val, np.arange(30, 36))
    expected_train = [t for t in range(60) if not 24 <= t < 42 and t != 3]
    np.testing.assert_array_equal(s.train, expected_train)
    assert s.info["nn_distance_m"] > 0.1 and s.info["candidates_median_nn_distance_m"] < 0.02
    tail = decide_split(seq, "tail", 0.1)
    np.testing.assert_array_equal(tail.val, np.arange(54, 60))
    with pytest.raises(SplitError, match="unknown split"):
        decide_split(seq, "random", 0.1)


# --------------------------------------------------------------------------------------------
# split.json and the Run object


def test_split_json_roundtrip_and_old_runs(tmp_path):
    T = 20
    valid = np.ones(T, bool)
    valid[5] = False
    run = Subject(tmp_path).run("r")
    s = Split("segment", 0.2, [0, 1, 2, 3, 4, 6, 7, 8, 9, 17, 18, 19], [11, 12, 13], guard=2,
              num_frames=T, info={"block": [10, 14]})
    run.write_split(s)
    back = read_split(run.split_path, T)
    assert back.method == "segment" and back.guard == 2 and back.info == {"block": [10, 14]}
    np.testing.assert_array_equal(back.train, s.train)
    np.testing.assert_array_equal(back.val, s.val)
    assert run.has_split()
    with pytest.raises(SplitError, match="re-captured"):
        read_split(run.split_path, T + 1)
    # older versions: only train/val lists -> the tail split they always were
    run.split_path.write_text(json.dumps({"train": list(range(18)), "val": [18, 19]}))
    old = read_split(run.split_path, T, valid, fallback_fraction=0.1)
    assert old.method == "tail" and list(old.val) == [18, 19] and not run.has_split()
    # no split.json at all: the tail split with the run config's val_fraction
    run.split_path.unlink()
    run.config_path.write_text("val_fraction: 0.25\nmodel: {resolution: 32}\n")
    seq = type("Seq", (), {"num_frames": T, "valid": valid})()
    none = run.split(seq)
    assert none.method == "tail" and none.val_fraction == 0.25
    np.testing.assert_array_equal(none.val, np.arange(15, 20))
    run.split_path.write_text("{not json")
    with pytest.raises(SplitError, match="cannot read"):
        run.split(seq)


def test_run_paths_and_latest_checkpoint(tmp_path):
    run = Run(Subject(tmp_path), "x")
    assert run.dir == tmp_path / "runs" / "x" and run.latest_checkpoint() is None and not run.is_trained()
    run.checkpoints_dir.mkdir(parents=True)
    for name in ("step_00000002.safetensors", "step_00000010.safetensors",
                 "step_00000011.aux.safetensors", "step_x.safetensors"):
        (run.checkpoints_dir / name).write_bytes(b"")
    assert run.latest_checkpoint().name == "step_00000010.safetensors"
    run.config_path.write_text("model: {}\n")
    assert run.is_trained() and Subject(tmp_path).runs() == [run]
    s = Subject(tmp_path)
    assert s.texture_path == tmp_path / "sequence" / "texture.png"
    assert s.export_manifest_path == tmp_path / "export" / "export.json"


# --------------------------------------------------------------------------------------------
# end to end: train writes it once, everything else reads it


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory, anny_body):
    from tiny_subject import write_tiny_subject

    return write_tiny_subject(tmp_path_factory.mktemp("split") / "s", anny_body, T=30, fps=10.0,
                              raised=(15, 18), invalid=(2,))


@pytest.fixture
def shared_body(monkeypatch, anny_body):
    """Every load_body_model returns the session's Anny (saves ~10 s per construction)."""
    import ram_avatar.body
    import ram_avatar.render.sequence

    def load(*a, **k):
        return anny_body

    monkeypatch.setattr(ram_avatar.body, "load_body_model", load)
    monkeypatch.setattr(ram_avatar.render.sequence, "load_body_model", load)


def _train(subject, run, *extra, steps=2) -> int:
    from tiny_subject import TINY_TRAIN

    from ram_avatar.cli import main

    sets = [x for s in TINY_TRAIN for x in ("--set", s)]
    return main(["train", str(subject), "--run", run, "--steps", str(steps), "--device", "cpu",
                 "--preset", "cpu-256-v1", *sets, *extra])


def _seen_by_readers(subject: Path, run_name: str) -> dict[str, list[int]]:
    """The held-out (and trained) frames as each reader of the split sees them."""
    import torch

    from exporters.avatar import export_avatar
    from ram_avatar.drive import RendererBackend
    from ram_avatar.eval.evaluate import evaluate_subject
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.runtime.avatar_runtime import _train_mask

    seq = load_sequence(subject)
    ev = evaluate_subject(subject, run_name, device="cpu")
    assert np.isfinite(ev["psnr"]) and ev["split"] == ev["run_split"] and "split_note" not in ev
    ex = export_avatar(subject, run_name, parity_frames=1000)
    drive_torch = RendererBackend(subject, "torch", run_name, torch.device("cpu")).run.split(seq)
    drive_onnx = RendererBackend(subject, "onnx", "not-this-run", torch.device("cpu")).run.split(seq)
    mda_val, mda_train = _seen_by_motion_aligner(subject, seq, run_name)
    return {"evaluate": ev["frame_indices"], "export": ex["parity_frames"],
            "drive_torch": drive_torch.val.tolist(), "drive_onnx (export.json's run)": drive_onnx.val.tolist(),
            "fit-mda (export.json's run)": mda_val,
            "runtime_train": np.flatnonzero(_train_mask(subject, seq, run_name)).tolist(),
            "drive_train": drive_torch.train.tolist(), "mda_train": mda_train}


def _seen_by_motion_aligner(subject: Path, seq, run_name: str) -> tuple[list[int], list[int]]:
    """fit-mda with no run named (it follows the exported run) and the MDA metrics' reading of
    the fitted aligner's split: (held-out frames, training frames)."""
    from ram_avatar.body import load_body_model
    from ram_avatar.motion.mda import MDAConfig, MotionAligner, fit_mda
    from ram_avatar.motion.metrics import _subject_bank

    meta = fit_mda(subject, steps=2, config=MDAConfig(batch_size=8), device="cpu")
    assert meta["split"]["run"] == run_name, meta["split"]
    aligner = MotionAligner.load(subject)
    _, _, _, tr, va, bank = _subject_bank(subject, load_body_model("anny"), aligner, seq)
    assert meta["frames"]["train"] == len(tr) == len(bank) and meta["frames"]["held_out"] == len(va)
    assert len(aligner.gate.train_groups) == len(tr)     # the part gate's "in distribution"
    return va.tolist(), tr.tolist()


@pytest.mark.slow
def test_split_written_once_and_read_everywhere(tiny_subject, shared_body, monkeypatch, capsys):
    import ram_avatar.training.run as run_mod

    real_train = run_mod.train

    def train_after_split(train_set, val_set, run_dir, config, **kw):
        rec = json.loads((Path(run_dir) / "split.json").read_text())  # written BEFORE training
        assert rec["method"] in ("tail", "segment") and rec["val"] == val_set.indices.tolist()
        assert rec["train"] == train_set.indices.tolist()
        return real_train(train_set, val_set, run_dir, config, **kw)

    monkeypatch.setattr(run_mod, "train", train_after_split)
    subject = Subject(tiny_subject)
    expected = {"default": ([], list(range(27, 30))),
                "frac20": (["--set", "val_fraction=0.2"], list(range(24, 30))),
                "segment": (["--holdout", "segment"], [15, 16, 17])}
    for run_name, (extra, val) in expected.items():
        assert _train(tiny_subject, run_name, *extra) == 0
        split = subject.run(run_name).split()
        assert split.val.tolist() == val, run_name
        seen = _seen_by_readers(tiny_subject, run_name)
        for reader in ("evaluate", "export", "drive_torch", "drive_onnx (export.json's run)",
                       "fit-mda (export.json's run)"):
            assert seen[reader] == val, (run_name, reader, seen[reader])
        assert seen["runtime_train"] == seen["drive_train"] == seen["mda_train"] == split.train.tolist()
        assert 2 not in split.train and not set(split.train) & set(val)
    seg = subject.run("segment").split()
    assert seg.guard == 3 and seg.train.tolist() == [0, 1] + list(range(3, 12)) + list(range(21, 30))
    metrics = json.loads(subject.run("segment").metrics_path.read_text())
    assert metrics["split"] == "segment" and metrics["frame_indices"] == [15, 16, 17]

    # the split is decided once: resuming reads it back, conflicting requests are refused
    before = subject.run("segment").split_path.read_bytes()
    assert _train(tiny_subject, "segment", steps=3) == 0
    assert subject.run("segment").split_path.read_bytes() == before
    capsys.readouterr()
    assert _train(tiny_subject, "segment", "--holdout", "tail", steps=4) == 2
    assert "--holdout tail conflicts" in capsys.readouterr().err
    assert _train(tiny_subject, "frac20", "--set", "val_fraction=0.1", steps=4) == 2
    assert "val_fraction=0.1 conflicts" in capsys.readouterr().err
    assert subject.run("segment").latest_checkpoint().name == "step_00000003.safetensors"

    # evaluating another split than the run's: computed, with a note saying what was trained on
    from ram_avatar.eval.evaluate import evaluate_subject

    other = evaluate_subject(tiny_subject, "default", device="cpu", split="segment")
    assert other["frame_indices"] == [15, 16, 17] and other["run_split"] == "tail"
    assert "3 of the 3 evaluated frames were trained on" in other["split_note"]
    assert json.loads(subject.run("default").metrics_path.read_text())["split_note"] == other["split_note"]


@pytest.mark.slow
def test_old_run_dirs_still_load(tiny_subject, shared_body):
    """A run folder as written before split.json had a method (lists only), or with none at all:
    every reader falls back to the tail split; resuming records it in the current layout."""
    subject = Subject(tiny_subject)
    if not subject.run("default").is_trained():
        assert _train(tiny_subject, "default") == 0
    old = subject.run("old")
    shutil.copytree(subject.run("default").dir, old.dir)
    tail = subject.run("default").split()
    old.split_path.write_text(json.dumps({"train": tail.train.tolist(), "val": tail.val.tolist()}))
    assert not old.has_split()
    seen = _seen_by_readers(tiny_subject, "old")
    assert seen["evaluate"] == seen["export"] == seen["drive_torch"] == tail.val.tolist() == [27, 28, 29]
    assert seen["runtime_train"] == tail.train.tolist()
    old.split_path.unlink()
    seen = _seen_by_readers(tiny_subject, "old")
    assert seen["evaluate"] == seen["drive_torch"] == [27, 28, 29]
    assert seen["runtime_train"] == tail.train.tolist()
    step = int(old.latest_checkpoint().name[5:13])
    assert _train(tiny_subject, "old", steps=step + 1) == 0
    assert old.has_split() and old.split().method == "tail" and old.split().val.tolist() == [27, 28, 29]
