"""``ram-avatar bench quality``: one run trained from scratch, evaluated at each budget."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def shared_body(monkeypatch, anny_body):
    import ram_avatar.body
    import ram_avatar.render.sequence

    def load(*a, **k):
        return anny_body

    monkeypatch.setattr(ram_avatar.body, "load_body_model", load)
    monkeypatch.setattr(ram_avatar.render.sequence, "load_body_model", load)


def test_bench_quality_tiny_budgets(tmp_path, anny_body, shared_body, capsys):
    from tiny_subject import TINY_TRAIN, write_tiny_subject

    from ram_avatar.bench_quality import PLOT_SIZE, SHEET_ROWS
    from ram_avatar.cli import main

    subject = write_tiny_subject(tmp_path / "s", anny_body, T=30, fps=10.0, raised=(15, 18))
    # a constant learning rate: one run, resumed at each budget (the scheduled case is below)
    sets = [x for s in TINY_TRAIN + ["optim.lr_decay_start=1"] for x in ("--set", s)]
    out = tmp_path / "bq"
    argv = ["bench", "quality", str(subject), "--minutes", "0.05", "0.02", "--preset", "cpu-256-v1",
            *sets, "--set", "val_fraction=0.2", "--holdout", "segment", "--out", str(out),
            "--run-prefix", "bq", "--device", "cpu"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    q = json.loads((out / "quality.json").read_text())
    assert printed["results"] == q["results"]
    res = q["results"]
    assert [r["minutes"] for r in res] == [0.02, 0.05]           # sorted budgets
    assert 0 < res[0]["steps"] < res[1]["steps"]                  # one run, resumed
    assert res[0]["train_seconds"] < res[1]["train_seconds"] <= 0.05 * 60 + 5
    for r in res:
        for k in ("psnr", "ssim", "psnr_masked", "ssim_masked", "temporal_stability"):
            assert math.isfinite(r[k]), (k, r[k])
        assert 5 < r["psnr"] < 60 and -1 <= r["ssim_masked"] <= 1
    # the run is the bench's own, split by segment (6 frames around the raised arms), recorded
    assert q["run"] == "bq-cpu-256-v1-segment" and q["holdout"] == "segment"
    split = json.loads((subject / "runs" / q["run"] / "split.json").read_text())
    assert split["method"] == "segment" and split["val"] == q["val_frame_indices"]
    assert len(split["val"]) == 6 and {15, 16, 17} <= set(split["val"])
    assert q["overrides"][-1] == "val_fraction=0.2" and q["preset"] == "cpu-256-v1"
    assert q["machine"]["cpu_count"] >= 1 and q["machine"]["torch_threads"] >= 1
    # the plot and the contact sheet: ground truth + one column per budget, SHEET_ROWS rows
    plot = cv2.imread(q["plot"])
    assert plot is not None and plot.shape[:2] == (PLOT_SIZE[1], PLOT_SIZE[0])
    sheet = cv2.imread(q["contact_sheet"])
    cell, gap, header = q["contact_sheet_cell"], 4, 28
    rows = min(SHEET_ROWS, len(split["val"]))
    assert sheet.shape[:2] == (header + rows * cell + (rows + 1) * gap, 3 * cell + 4 * gap)
    assert len(q["contact_frames"]) == rows and set(q["contact_frames"]) <= set(split["val"])
    assert np.std(sheet) > 5
    # a second bench on the same subject never reuses (or overwrites) the first run
    again = [a for a in argv[:4] + ["0.01"] + argv[6:] if a not in ("--out", str(out))]
    assert main(again) == 0
    q2 = json.loads(capsys.readouterr().out)
    assert q2["run"] == "bq-cpu-256-v1-segment-2" and len(q2["results"]) == 1
    # with the learning-rate schedule (annealed to each budget's end) every budget is a run of
    # its own, from scratch
    sched = [a if a != "optim.lr_decay_start=1" else "optim.lr_decay_start=0.5" for a in again]
    sched[4:5] = ["0.01", "0.02"]
    assert main(sched) == 0
    q3 = json.loads(capsys.readouterr().out)
    runs = [r["run"] for r in q3["results"]]
    assert runs == ["bq-cpu-256-v1-segment-3", "bq-cpu-256-v1-segment-3-0.02min"]
    assert q3["benchmark"].endswith("(one run per budget)")
    for r in q3["results"]:     # a run directory of its own (a new one cannot resume)
        assert (subject / "runs" / r["run"] / "split.json").is_file()
        assert 0 < r["train_seconds"] <= r["minutes"] * 60 + 5     # within its budget
        assert math.isfinite(r["psnr_masked"])
