"""One `train` per run: a second one exits at once naming the holder; kill -9 leaves no block.
Plus the train CLI's argument checks and the rank-0-only summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ram_avatar.cli import main
from ram_avatar.errors import RunLockedError
from ram_avatar.io.lock import FolderLock, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, anny_body):
    from tiny_subject import write_tiny_subject

    return write_tiny_subject(tmp_path_factory.mktemp("lock") / "subject", anny_body, T=12)


def _train(subject, *extra):
    from tiny_subject import TINY_TRAIN

    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu", *extra]
    for s in TINY_TRAIN:
        argv += ["--set", s]
    return main(argv)


def _holder(lock_dir, ready):
    """A separate process that takes the run's lock and sleeps (as a training run would)."""
    code = (f"import time, pathlib; from ram_avatar.io.lock import FolderLock; "
            f"l = FolderLock({str(lock_dir)!r}, what='training run').acquire(); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(300):
        if ready.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("lock holder did not start")


def test_second_train_on_a_locked_run_exits_at_once(tiny, tmp_path, capsys):
    run = tiny / "runs" / "r1"
    proc = _holder(run, tmp_path / "ready")
    try:
        t0 = time.monotonic()
        assert _train(tiny, "--run", "r1", "--steps", "2") == 2
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert f"PID {proc.pid}" in err and "in use" in err and "--run" in err
        assert took < 5.0, took                      # refused before loading anything
        assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()
    finally:
        proc.send_signal(signal.SIGKILL)             # kill -9: the kernel drops its lock
        proc.wait()
    assert (run / ".lock").exists()                  # the stale file is still there ...
    assert _train(tiny, "--run", "r1", "--steps", "2") == 0   # ... and does not block
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["checkpoint"].endswith("step_00000002.safetensors")
    assert not (run / ".lock").exists()              # released and removed


def test_folder_lock_in_process(tmp_path):
    d = tmp_path / "a" / "b"
    with FolderLock(d, what="training run") as lock:
        assert lock.locked and (d / ".lock").is_file()
        info = json.loads((d / ".lock").read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
            FolderLock(d, what="training run").acquire()
    assert not (tmp_path / "a").exists()             # folders made for the lock are removed
    # another folder's lock is independent; non-zero torchrun ranks do not lock
    with FolderLock(tmp_path / "x"), FolderLock(tmp_path / "y"):
        pass
    os.environ["RANK"] = "1"
    try:
        with run_lock(tmp_path / "x"):
            assert not (tmp_path / "x" / ".lock").exists()
    finally:
        del os.environ["RANK"]


@pytest.mark.parametrize("argv,needle", [
    (["--minutes", "0"], "--minutes: must be greater than 0"),
    (["--minutes", "-1"], "--minutes: must be greater than 0"),
    (["--steps", "-5"], "--steps: must be greater than 0"),
    (["--steps", "0"], "--steps: must be greater than 0"),
])
def test_non_positive_budgets_are_refused(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path), *argv])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_bad_set_value_is_one_clear_error(tmp_path, capsys):
    assert main(["train", str(tmp_path / "s"), "--set", "lr=[1,2"]) == 2
    err = capsys.readouterr().err
    assert "--set 'lr=[1,2'" in err and "not valid YAML" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "s"), "--set", "lr"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_only_rank_zero_prints_the_summary(tiny, capsys, monkeypatch):
    """Under torchrun the other ranks train too but print nothing (rank 1 has no checkpoint)."""
    import ram_avatar.training.run as run_mod

    monkeypatch.setattr(run_mod, "train_subject", lambda *a, **k: {"checkpoint": None})
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _train(tiny, "--steps", "1") == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _train(tiny, "--steps", "1") == 0
    assert json.loads(capsys.readouterr().out) == {"checkpoint": None}


@pytest.mark.slow
def test_nproc_per_node_launches_ddp_workers(tiny, capfd, monkeypatch):
    """`train --nproc-per-node 2 --run ddp`: the elastic launcher starts two gloo ranks (no
    torchrun option parsing to trip over `--run`); one summary, with world_size 2.

    This machine's name is made unresolvable in the launching process (as on CI runners and in
    containers whose host name is not in /etc/hosts): the ranks must still meet, on loopback,
    and the launcher's settings (OMP_NUM_THREADS, GLOO_SOCKET_IFNAME) must not stay behind in
    the calling process."""
    import os
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda name="": "unresolvable-host.invalid")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert _train(tiny, "--nproc-per-node", "2", "--run", "ddp", "--steps", "2") == 0
    leaked = sorted(k for k in os.environ
                    if k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME") or k.startswith("TORCHELASTIC"))
    assert leaked == []
    out = capfd.readouterr().out
    assert out.count('"world_size": 2') == 1 and out.count('"step": 2') == 1
    run = tiny / "runs" / "ddp"
    assert (run / "checkpoints" / "step_00000002.safetensors").is_file()
    assert not (run / ".lock").exists()
