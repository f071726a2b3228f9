"""A full disk while training: one clear error, the previous checkpoint intact, no orphan files,
and the run resumes from that checkpoint once there is space again."""

from __future__ import annotations

import errno
import hashlib

import pytest

from ram_avatar.errors import DiskFullError
from ram_avatar.io.disk import is_disk_full
from ram_avatar.training import list_checkpoints, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("error", ["safetensors", "oserror"])
def test_disk_full_while_saving_a_checkpoint(tmp_path, monkeypatch, error):
    import safetensors.torch
    from safetensors import SafetensorError
    from test_trainer import SyntheticAvatar, tiny_config

    cfg = tiny_config(checkpoint_interval=2, ema_decay=0.9)    # EMA -> an .aux file per step
    run = tmp_path / "run"
    data = SyntheticAvatar(4)
    train(data, None, run, cfg, steps=2, device="cpu", show_progress=False)
    assert _files(run) == ["step_00000002.aux.safetensors", "step_00000002.safetensors"]
    before = {n: _sha(run / "checkpoints" / n) for n in _files(run)}
    # a stale temporary file of a save that was killed (kill -9) earlier
    stale = run / "checkpoints" / ".step_00000002.k1ll3d.tmp.safetensors"
    stale.write_bytes(b"\0" * 100)
    stale_config = run / ".config.k1ll3d.tmp.yaml"
    stale_config.write_text("half")
    (run / "previews").mkdir(exist_ok=True)
    stale_preview = run / "previews" / ".step_00000002.k1ll3d.tmp.png"
    stale_preview.write_bytes(b"x")
    keep = run / ".metrics.other.tmp.json"                 # not train's: left alone
    keep.write_text("{}")

    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if ".aux." in str(filename):                 # the small aux file still fits ...
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:              # ... the main one fills the disk
            f.write(b"\0" * 4096)
        if error == "safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(DiskFullError) as exc:
        train(data, None, run, cfg, steps=4, device="cpu", show_progress=False)
    msg = str(exc.value)
    assert "disk is full" in msg and "step_00000004.safetensors" in msg
    assert "step_00000002.safetensors (step 2), is intact" in msg and "free there" in msg
    assert "\n" not in msg
    # previous checkpoint intact, no orphan aux of step 4, no temporary files
    assert _files(run) == ["step_00000002.aux.safetensors", "step_00000002.safetensors"]
    assert {n: _sha(run / "checkpoints" / n) for n in _files(run)} == before
    assert not stale.exists() and not stale_config.exists() and not stale_preview.exists()
    assert keep.exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    summary = train(data, None, run, cfg, steps=4, device="cpu", show_progress=False)
    assert summary["start_step"] == 2 and summary["step"] == 4
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000004.safetensors"


def test_is_disk_full_recognises_wrapped_errors():
    from ram_avatar.errors import VideoError

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise VideoError("encoding frame 3 failed") from e
    except VideoError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("x"))
