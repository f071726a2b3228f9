"""ram-avatar demo chains the stage functions (no argv strings, no import of the CLI)."""

from pathlib import Path

from ram_avatar.demo import find_exporter, run_demo


def test_demo_calls_each_stage_function_in_order(tmp_path):
    calls = []

    def stage(name, result=None):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            return result
        return fn

    metrics = {"psnr": 20.5, "ssim": 0.8, "psnr_masked": 18.0, "ssim_masked": 0.7, "lpips": None,
               "frames": 12}
    out = run_demo(tmp_path, minutes=0.5, device="cpu", stages={
        "capture": stage("capture"), "train": stage("train"),
        "export": stage("export", {"max_abs_diff": 3e-6}),
        "evaluate": stage("evaluate", metrics), "drive": stage("drive")})
    assert [c[0] for c in calls] == ["capture", "train", "export", "evaluate", "drive"]
    subject = tmp_path / "taiji"
    assert calls[0][1] == (Path(__file__).resolve().parent.parent / "examples" / "taiji.mp4", subject)
    assert calls[1][1] == (subject,) and calls[1][2] == {"preset": "cpu-256", "minutes": 0.5,
                                                         "device": "cpu"}
    assert calls[4][1][2] == tmp_path / "drive.mp4"
    assert out["held_out"] == metrics and out["onnx_max_abs_diff"] == 3e-6
    assert set(out["timings_s"]) == {"capture", "train", "export", "evaluate", "drive"}


def test_demo_skips_capture_of_an_existing_subject(tmp_path):
    (tmp_path / "taiji" / "sequence").mkdir(parents=True)
    (tmp_path / "taiji" / "sequence" / "manifest.json").write_text("{}")
    seen = []
    fns = {n: (lambda n: lambda *a, **k: seen.append(n) or {"max_abs_diff": 0.0, "psnr": 1,
                                                            "ssim": 1, "psnr_masked": 1,
                                                            "ssim_masked": 1, "lpips": 1,
                                                            "frames": 1})(n)
           for n in ("capture", "train", "export", "evaluate", "drive")}
    run_demo(tmp_path, stages=fns)
    assert seen == ["train", "export", "evaluate", "drive"]


def test_export_stage_is_found_by_entry_point():
    from exporters.avatar import export_avatar

    assert find_exporter() is export_avatar
