"""Driver-to-avatar calibration (calibration.driver, calibration.cli driver).

Measured (first 2 s of each example, 45 frames fitted, default 55-degree FOV, CPU, one thread,
20-30 s per clip including keypoint detection):

=====================  ==========================================================  ========  =========
clip                   betas [gender, age, muscle, weight, height, proportions]    height    body err
=====================  ==========================================================  ========  =========
basketball_drive.mp4   0.326 0.655 0.341 0.732 0.602 0.155                          1.96 m    0.0045
taiji.mp4              0.468 0.512 0.424 0.720 0.492 0.520                          1.64 m    0.0008
=====================  ==========================================================  ========  =========

The betas differ by 0.44 (L2), mostly in proportions (0.37), and the standing heights by
0.33 m. Muscle and weight hardly move the joints, so they are mostly set by the shape prior: a
fit of all 412 taiji frames gives [0.369 0.501 0.212 0.887 0.431 0.605] (height 1.57 m), 0.31
(L2) from the 2-s fit of the same person, mostly in muscle and weight; height and proportions
are the informative values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.driver import (DriverCalibrationError, calibrate_driver, load_driver_json,
                                rest_height_m, save_driver_json)
from ram_avatar.errors import RamAvatarError, VideoError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

GOOD = {"version": 1, "body_model": "anny", "betas": [0.5, 0.5, 0.5, 0.5, 0.6, 0.5],
        "frames_used": 40, "reprojection_error": 0.01, "height_m": 1.75, "fps": 30.0,
        "source": "me.mp4"}


def test_save_and_load_round_trip(tmp_path):
    path = save_driver_json(GOOD, tmp_path / "sub" / "driver.json")
    data = load_driver_json(path)
    assert data["betas"] == GOOD["betas"] and data["height_m"] == 1.75
    assert load_driver_json(path, body_model="anny")["body_model"] == "anny"
    assert json.loads(path.read_text())["frames_used"] == 40


@pytest.mark.parametrize("change,message", [
    ({"betas": [0.5] * 5}, "6 betas"),
    ({"betas": [0.5, 0.5, 0.5, 0.5, 1.5, 0.5]}, r"\[0, 1\]"),
    ({"betas": "tall"}, "betas"),
    ({"betas": [0.5, float("nan"), 0.5, 0.5, 0.5, 0.5]}, "finite"),
    ({"body_model": "mano"}, "unknown body_model"),
    ({"height_m": 7.0}, "plausible standing height"),
    ({"fps": 0}, "fps"),
    ({"frames_used": 0}, "frames_used"),
    ({"version": 99}, "newer"),
])
def test_invalid_driver_json_is_rejected(tmp_path, change, message):
    path = tmp_path / "driver.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(DriverCalibrationError, match=message):
        load_driver_json(path)
    with pytest.raises(DriverCalibrationError):
        save_driver_json({**GOOD, **change}, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_load_errors(tmp_path):
    assert issubclass(DriverCalibrationError, RamAvatarError)
    with pytest.raises(DriverCalibrationError, match="not found.*calibrate driver"):
        load_driver_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DriverCalibrationError, match="not valid JSON"):
        load_driver_json(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"body_model": "anny"}))
    with pytest.raises(DriverCalibrationError, match="missing betas"):
        load_driver_json(tmp_path / "partial.json")
    save_driver_json(GOOD, tmp_path / "d.json")
    with pytest.raises(DriverCalibrationError, match="smplx"):
        load_driver_json(tmp_path / "d.json", body_model="smplx")


def test_source_errors(tmp_path):
    with pytest.raises(DriverCalibrationError, match="cannot open webcam 97"):
        calibrate_driver(97, seconds=0.5)
    with pytest.raises(DriverCalibrationError, match="positive"):
        calibrate_driver(EXAMPLES / "taiji.mp4", seconds=0)
    with pytest.raises(VideoError):
        calibrate_driver(tmp_path / "missing.mp4")


def test_rest_height_follows_height_phenotype():
    from ram_avatar.body import load_body_model

    body = load_body_model("anny")
    heights = []
    for h in (0.2, 0.5, 0.8):
        betas = torch.full((1, 6), 0.5)
        betas[0, 4] = h
        heights.append(rest_height_m(body, betas))
    assert heights[0] < heights[1] < heights[2]
    assert 1.4 < heights[1] < 1.9


@pytest.mark.slow
def test_driver_shapes_differ_between_subjects(tmp_path, capsys):
    from calibration.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "driver.json"
    rc = main(["calibrate", "driver", str(EXAMPLES / "basketball_drive.mp4"), "--seconds", "2",
               "--device", "cpu", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.rindex('{\n  "version"'):])
    bball = load_driver_json(out, body_model="anny")
    assert summary["betas"] == bball["betas"]
    taiji = calibrate_driver(EXAMPLES / "taiji.mp4", seconds=2.0, device="cpu")
    save_driver_json(taiji, tmp_path / "taiji.json")
    for d, fps in ((bball, 30.0), (taiji, 23.976)):
        assert d["fps"] == pytest.approx(fps, abs=0.01)
        assert d["frames_used"] >= 40 and d["reprojection_error"] < 0.03
        assert 1.3 < d["height_m"] < 2.2
    diff = np.linalg.norm(np.subtract(bball["betas"], taiji["betas"]))
    assert diff > 0.15, (bball["betas"], taiji["betas"])
    assert abs(bball["height_m"] - taiji["height_m"]) > 0.1
