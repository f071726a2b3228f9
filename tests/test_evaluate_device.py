"""``evaluate --mda/--curve`` with the CLI's default ``--device auto`` (regression: "auto" used to
reach ``torch.nn.Module.to`` and fail with "Expected one of cpu, cuda, ...")."""

import pytest
import torch

import ram_avatar.eval.evaluate as ev


class _Reached(Exception):
    pass


def test_evaluate_mda_resolves_auto_device(monkeypatch):
    seen = {}

    class _Seq:
        manifest = {"body_model": {"name": "anny"}}

    def fake_body(name, model_path=None, device="cpu"):
        seen["device"] = device
        torch.zeros(1).to(device)  # what load_body_model does with it: must be a real device
        raise _Reached

    monkeypatch.setattr(ev, "load_sequence", lambda subject_dir: _Seq())
    import ram_avatar.body as body_pkg

    monkeypatch.setattr(body_pkg, "load_body_model", fake_body)
    with pytest.raises(_Reached):
        ev.evaluate_mda("unused", "unused.mp4", device="auto", curve=True)
    assert seen["device"] in ("cpu", "cuda", torch.device("cpu"), torch.device("cuda"))
    assert str(seen["device"]) == ("cuda" if torch.cuda.is_available() else "cpu")
