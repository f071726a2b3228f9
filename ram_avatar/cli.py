"""The ``ram-avatar`` command line.

Core verbs live here (capture, info, train, drive, evaluate, demo). Verbs implemented by the
top-level packages that depend on ``ram_avatar`` (``exporters``: export; ``calibration``:
calibrate; ``gui``: live) register themselves through the ``ram_avatar.commands`` entry-point
group, so imports keep going one way (those packages -> ram_avatar, never back).

Every user-fixable error (:class:`~ram_avatar.errors.RamAvatarError`) is printed as one message
saying what was wrong and what to do, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ram_avatar.errors import RamAvatarError
from ram_avatar.runtime import BACKEND_HELP, RENDER_BACKENDS

log = logging.getLogger("ram_avatar")

# OpenMP threads that spin while waiting stall badly when the cores are shared (e.g. the
# MediaPipe graph or another job next to training); passive waiting costs little otherwise.
# Set before torch is imported by any verb; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")



def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")


def _positive(kind):
    """argparse type: a number of ``kind`` (int / float) that is > 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _check_overrides(items: list[str]) -> list[str]:
    """Check ``--set KEY=VALUE`` items before any work: each needs ``=`` and a value that
    parses as YAML (the config applies them, training.config.apply_overrides).

    Raises:
        RamAvatarError: the first bad item, with the YAML parser's reason and a hint.
    """
    import yaml

    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RamAvatarError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=2e-4")
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as e:
            reason = str(getattr(e, "problem", None) or e).strip()
            raise RamAvatarError(
                f"--set {item!r}: the value {value!r} is not valid YAML ({reason}); write lists "
                f"as [1, 2], and quote text with spaces or brackets, e.g. --set '{key}=\"...\"'"
            ) from None
    return items


def _rank() -> int:
    """This process's rank under torchrun / the elastic launcher (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)


def _launch_workers(a) -> int:
    """``train --nproc-per-node N``: run N copies of this command through PyTorch's elastic
    launcher (torchrun's engine, ``--standalone`` single node), so users never meet torchrun's
    own option parsing. Each worker gets RANK/LOCAL_RANK/WORLD_SIZE and trains one DDP rank;
    rank 0 prints the summary.

    Raises:
        RamAvatarError: a worker failed (its own error was printed above).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    child, skip = [], False
    for tok in a.argv:
        if skip:
            skip = False
        elif tok in ("--nproc-per-node", "--nproc_per_node"):
            skip = True
        elif not tok.startswith(("--nproc-per-node=", "--nproc_per_node=")):
            child.append(tok)
    # One node: the rendezvous, the ranks' store and gloo all on the loopback address. Left to
    # itself the launcher publishes this machine's host name, and where that name does not
    # resolve (containers, CI runners) the ranks wait on it until their timeouts.
    launch = ["--standalone", "--local-addr", "127.0.0.1", "--nproc-per-node",
              str(a.nproc_per_node), "-m", "--", "ram_avatar.cli", *child]
    log.info("launching %d training processes: torchrun %s", a.nproc_per_node, " ".join(launch))
    saved = dict(os.environ)          # the launcher sets OMP_NUM_THREADS etc. in this process
    loopback = _loopback_interface()
    if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    try:
        run(parse_args(launch))
    except ChildFailedError as e:
        failures = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise RamAvatarError(f"multi-process training failed ({failures}); see the worker's "
                             "error above") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0


def _loopback_interface() -> str | None:
    """Name of this machine's loopback network interface (``lo`` on Linux, ``lo0`` on macOS),
    or None where the platform does not list interfaces."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="compute device (default: auto = CUDA when available)")


# --- verbs ----------------------------------------------------------------------------------

def cmd_capture(a) -> int:
    from ram_avatar.capture.fitting import FitConfig
    from ram_avatar.capture.pipeline import capture, sequence_info

    fit = FitConfig(iters_silhouette=a.silhouette_iters) if a.silhouette_iters else None
    seq = capture(a.video, a.output, start=a.start, end=a.end, camera=a.camera,
                  body_model=a.body_model, model_path=a.model_path, device=a.device,
                  fit_config=fit, overlay=not a.no_overlay, estimate_focal=a.estimate_focal,
                  overwrite=a.overwrite)
    _print_json(sequence_info(seq))
    return 0


def cmd_body_model(a) -> int:
    """``body-model import PATH``: a licensed SMPL-X file into the user's model cache."""
    from ram_avatar.body.smplx_backend import import_smplx_model

    _print_json(import_smplx_model(a.path, gender=a.gender))
    return 0


def cmd_info(a) -> int:
    from ram_avatar.capture.pipeline import sequence_info
    from ram_avatar.io.sequence import load_sequence

    info = sequence_info(load_sequence(a.subject))
    if a.json:
        _print_json(info)
    else:
        for k, v in info.items():
            sys.stdout.write(f"{k}: {v}\n")
    return 0


def cmd_train(a) -> int:
    from ram_avatar.training.run import train_subject

    _check_overrides(a.set)
    if a.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_workers(a)
    summary = train_subject(a.subject, preset=a.preset, steps=a.steps, minutes=a.minutes,
                            run_name=a.run, device=a.device, overrides=a.set, holdout=a.holdout)
    if _rank() == 0:  # under torchrun only rank 0 reports (the others hold no checkpoint path)
        _print_json(summary)
    return 0


def cmd_drive(a) -> int:
    from ram_avatar.drive import drive

    _print_json(drive(a.subject, a.source, a.output, backend=a.backend, device=a.device,
                      run_name=a.run, camera=a.camera, driver=a.driver, mda=a.mda,
                      mda_strength=a.mda_strength, report=a.report, background=a.background,
                      layout=a.layout, framing=a.framing, zoom=a.zoom, offset=a.offset,
                      out_size=a.out_size, motion_out=a.motion_out))
    return 0


def cmd_evaluate(a) -> int:
    from ram_avatar.eval.evaluate import evaluate_mda, evaluate_subject

    mda_options = {"strength": a.mda_strength, "mode": a.mda_mode, "curve": a.curve,
                   "track_cache": not a.no_track_cache}
    if a.curve:  # the motion-alignment trade-off curve needs no trained renderer
        if a.source is None:
            raise RamAvatarError("--curve needs --source VIDEO (the driving video to measure)")
        _print_json(evaluate_mda(a.subject, a.source, device=a.device, **mda_options))
        return 0
    _print_json(evaluate_subject(a.subject, run_name=a.run, device=a.device,
                                 lpips_weights=a.lpips_weights, mda=a.mda, source=a.source,
                                 split=a.split, mda_options=mda_options,
                                 refine_poses=a.refine_poses))
    return 0


def cmd_create(a) -> int:
    """capture -> train -> export -> fit-mda of one video, resumable; ``--live`` opens the app."""
    import importlib.util

    from ram_avatar.create import create

    _check_overrides(a.set)
    if a.live and importlib.util.find_spec("PySide6") is None:  # before an hour of training
        raise RamAvatarError("--live needs the app: pip install -e '.[gui]' (or leave --live out "
                             "and open it later with `ram-avatar live SUBJECT`)")
    _print_json(create(a.video, a.output, minutes=a.minutes, steps=a.steps, preset=a.preset,
                       run_name=a.run, device=a.device, overrides=a.set))
    return main(["live", str(a.output)]) if a.live else 0


def cmd_demo(a) -> int:
    """capture -> train -> export -> drive on the bundled sample videos."""
    from ram_avatar.demo import run_demo

    _print_json(run_demo(Path(a.output), minutes=a.minutes, device=a.device))
    return 0


def cmd_doctor(a) -> int:
    """What this machine can do (GPU, runtimes, rasterizers, models, weights) and how to fix
    each missing piece."""
    from ram_avatar.doctor import format_report, run_checks

    report = run_checks()
    if a.json:
        _print_json(report)
    else:
        sys.stdout.write(format_report(report))
    return 0


def cmd_bench(a) -> int:
    """Benchmarks (speed and memory targets are checked here, never in timed tests)."""
    if a.what == "gpu":
        from ram_avatar.bench_gpu import DEFAULT_SIZES, bench_gpu

        rep = bench_gpu(a.out or "bench_gpu", a.subject, device=a.device, video=a.video,
                        sizes=tuple(a.resolution or DEFAULT_SIZES), frames=a.frames)
        _print_json({k: rep[k] for k in ("json", "markdown", "targets")})
    elif a.what == "render" and a.ort_profile:
        from ram_avatar.bench_render import ort_profile_renderer

        tables = [ort_profile_renderer(a.preset or "paper-1024", S, out_dir=a.out)
                  for S in (a.resolution or (256,))]
        sys.stderr.write("\n".join(t["markdown"] for t in tables))
        _print_json(tables)
    elif a.what == "render":
        from ram_avatar.bench_render import bench_render

        _print_json(bench_render(resolutions=tuple(a.resolution or (256, 512, 1024)), device=a.device,
                                 preset=a.preset or "paper-1024", onnx=not a.no_onnx,
                                 train_step=a.train_step))
    elif a.what == "quality":
        if a.subject is None:
            raise RamAvatarError("ram-avatar bench quality needs SUBJECT_DIR")
        from ram_avatar.bench_quality import bench_quality

        _print_json(bench_quality(a.subject, minutes=a.minutes or [2, 5, 10, 20],
                                  preset=a.preset or "cpu-256", overrides=a.set,
                                  holdout=a.holdout or "tail", out=a.out,
                                  run_prefix=a.run_prefix, device=a.device))
    else:
        if a.subject is None:
            raise RamAvatarError("ram-avatar bench live needs SUBJECT_DIR")
        from ram_avatar.bench import bench_live

        res = a.resolution[0] if a.resolution else None
        if a.soak is not None:
            from ram_avatar.bench import bench_soak

            def show(row):  # one line per minute on stderr while the soak runs
                sys.stderr.write(json.dumps(row) + "\n")
                sys.stderr.flush()

            rep = bench_soak(a.subject, a.soak, resolution=res, device=a.device, backend=a.backend,
                             pipelined=not a.sequential, on_row=show)
            if a.out:
                from ram_avatar.utils import atomic_write_text

                atomic_write_text(a.out, json.dumps(rep, indent=1) + "\n")
            _print_json(rep)
            return 0
        output = None
        if a.background != "learned" or a.framing is not None:
            from ram_avatar.render.framing import OutputSettings

            output = OutputSettings.parse(a.background, a.framing, a.zoom, "0,0", a.out_size)
        _print_json(bench_live(a.subject, resolution=res, device=a.device, backend=a.backend, frames=a.frames,
                               pipelined=not a.sequential, output=output,
                               pacing=not a.no_pacing, split_pose=a.split_pose))
    return 0


def run_verb(argv: list[str]) -> int:
    """Run one ``ram-avatar`` verb in this process (``argv`` without the program name)."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return int(args.func(args) or 0)


def _add_capture_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``capture VIDEO -o SUBJECT``."""
    p = sub.add_parser("capture", help="fit body/face/hand templates to every frame of a video")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="subject directory to write")
    p.add_argument("--start", type=int, default=0, help="first frame (inclusive)")
    p.add_argument("--end", type=int, default=None, help="last frame (exclusive)")
    p.add_argument("--camera", default=None, help="camera.json from `ram-avatar calibrate camera`")
    p.add_argument("--estimate-focal", action="store_true",
                   help="without --camera: estimate the focal length from the video itself")
    p.add_argument("--body-model", default="anny", choices=["anny", "smplx"])
    p.add_argument("--model-path", default=None, help="directory with SMPLX_NEUTRAL.npz (smplx)")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay video")
    p.add_argument("--silhouette-iters", type=int, default=0, metavar="N",
                   help="after the keypoint fit, N iterations fitting pose and shape to the person "
                        "masks too (silhouette term; about 5 s per iteration for 400 frames on 2 "
                        "CPU cores). On taiji (loose clothes) 30 iterations raised the mask IoU "
                        "0.825 -> 0.839; off by default")
    p.add_argument("--overwrite", nargs="?", const="move", default=None, choices=["move", "remove"],
                   help="OUTPUT already holds a subject: replace it, moving its sequence, runs "
                        "and export into OUTPUT/replaced-<time>/ (move, the default) or deleting "
                        "them (remove), once the new capture has succeeded")
    _add_device(p)
    p.set_defaults(func=cmd_capture)


def _add_body_model_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``body-model import PATH``."""
    p = sub.add_parser("body-model", help="import a licensed SMPL-X model file into your "
                                          "model cache (numeric arrays only)")
    bm = p.add_subparsers(dest="action", required=True)
    q = bm.add_parser("import", help="read PATH without unpickling, store its arrays as "
                                     "<cache>/smplx/<sha256>.npz; subjects refer to it by that hash")
    q.add_argument("path", help="SMPLX_<GENDER>.npz or the folder holding it")
    q.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    q.set_defaults(func=cmd_body_model)


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``info SUBJECT``."""
    p = sub.add_parser("info", help="summary of a captured subject")
    p.add_argument("subject")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``train SUBJECT``."""
    p = sub.add_parser("train", help="train the avatar renderer (resumes from the latest checkpoint)")
    p.add_argument("subject")
    p.add_argument("--preset", default="cpu-256", help="training preset: cpu-256 (full renderer, CPU sizes) | cpu-256-v1 (renderer v1) | paper-1024 (GPU)")
    p.add_argument("--steps", type=_positive(int), default=None,
                   help="train up to this total step count (> 0)")
    p.add_argument("--minutes", type=_positive(float), default=None,
                   help="train for this many minutes (> 0)")
    p.add_argument("--nproc-per-node", type=_positive(int), default=1, metavar="N",
                   help="train with N processes on this machine (DDP, one per GPU; gloo on "
                        "CPU), launched through PyTorch's elastic launcher (torchrun)")
    p.add_argument("--run", default="default", help="run name under SUBJECT/runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set batch_size=4 (repeatable)")
    p.add_argument("--holdout", default=None, choices=["tail", "segment"],
                   help="held-out frames of a new run, decided once and written to "
                        "runs/RUN/split.json: tail = the last val_fraction of the video (default), "
                        "segment = the contiguous block of poses farthest from the rest (training "
                        "excludes it and a short guard band); a resumed run keeps its own")
    _add_device(p)
    p.set_defaults(func=cmd_train)


def _add_drive_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``drive SUBJECT --source VIDEO -o OUTPUT``."""
    p = sub.add_parser("drive", help="drive the avatar with another video's motion (offline)")
    p.add_argument("subject")
    p.add_argument("--source", required=True, help="driving video")
    p.add_argument("-o", "--output", required=True,
                   help="output video: .mp4 (H.264), .webm (VP9 with alpha, plays transparent in "
                        "OBS) or .mov (ProRes 4444 with alpha)")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP,
                   choices=["auto"] + [b for b in RENDER_BACKENDS if b != "tensorrt"])
    p.add_argument("--run", default="default")
    p.add_argument("--camera", default=None, help="camera.json of the driving video")
    p.add_argument("--driver", default=None, help="driver.json from `ram-avatar calibrate driver`")
    p.add_argument("--mda", default="auto", choices=["auto", "on", "off", "both"],
                   help="motion distribution alignment (auto: on when fitted)")
    p.add_argument("--mda-strength", type=float, default=1.0, help="0 = source pose, 1 = aligned")
    p.add_argument("--report", action="store_true",
                   help="also write OUTPUT_STEM.render_stats.json (weights-free image statistics "
                        "of each variant: silhouette IoU, Lab colour distance to the training "
                        "frames, temporal change/jitter, sharpness, chroma speckle, per-part "
                        "coverage, per-part colour distance and arm fidelity (arm pixels in the "
                        "arms' own colours, not the torso's); no ground truth needed) and "
                        "OUTPUT_STEM.contact.png (8 frames: driving | avatar | avatar + MDA); "
                        "use with --mda both to compare with and without alignment")
    p.add_argument("--background", default="learned", metavar="MODE",
                   help="learned (the training room, default) | transparent (.webm/.mov only) | "
                        "#RRGGBB | IMAGE path; all but learned need an export with the alpha output")
    p.add_argument("--layout", default=None, choices=["side-by-side", "avatar"],
                   help="driving frame | avatar, or the avatar alone in an --out-size frame "
                        "(default: side-by-side for .mp4 with the learned background and no "
                        "--framing, avatar otherwise)")
    p.add_argument("--framing", default=None, choices=["full", "upper", "head"],
                   help="place the avatar in the output frame: whole person, head to hips, or "
                        "head and shoulders (crop and upscale of the rendered frame; default "
                        "full with --layout avatar)")
    p.add_argument("--zoom", type=float, default=1.0, help="framing zoom (> 1 = closer)")
    p.add_argument("--offset", default="0,0", metavar="X,Y",
                   help="shift of the framing box as fractions of its width,height (+ = right, down)")
    p.add_argument("--out-size", default="1280x720", metavar="WxH",
                   help="size of the framed avatar (default 1280x720)")
    p.add_argument("--motion-out", default=None, metavar="FILE",
                   help="also write the driven avatar's motion: .npz (smplx-style parameters, "
                        "joints in metres in the camera frame, joint names, fps) or .bvh")
    _add_device(p)
    p.set_defaults(func=cmd_drive)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate SUBJECT``."""
    p = sub.add_parser("evaluate", help="metrics on the held-out frames -> metrics.json")
    p.add_argument("subject")
    p.add_argument("--run", default="default")
    p.add_argument("--lpips-weights", default=None, help="AlexNet ImageNet weights for LPIPS")
    p.add_argument("--mda", action="store_true", help="motion-alignment metrics (needs --source)")
    p.add_argument("--refine-poses", type=int, default=0, metavar="N",
                   help="refine the held-out frames' poses from their own images for N passes "
                        "(renderer frozen, annealed, with a temporal prior; test-time "
                        "refinement, noted in metrics.json; 20 passes took about 4 minutes for "
                        "41 frames at 256 px on 2 CPU cores). "
                        "Default 0: fitted poses (with the run's refined shape)")
    p.add_argument("--source", default=None, help="driving video for --mda")
    p.add_argument("--mda-mode", default=None, choices=["part", "global"],
                   help="--mda: part = align only the body parts out of the avatar's pose "
                        "distribution, global = align every part (default: the fitted aligner's, part)")
    p.add_argument("--mda-strength", type=float, default=1.0, help="--mda: 0 = source pose, 1 = aligned")
    p.add_argument("--curve", action="store_true",
                   help="motion alignment only (no renderer needed; needs --source): the trade-off "
                        "curve of both modes at strengths 0..1 -> SUBJECT/mda/mda_curve-VIDEO.json/.png")
    p.add_argument("--no-track-cache", action="store_true",
                   help="--mda: re-track the driving video instead of reusing its cached body fit")
    p.add_argument("--split", default=None, choices=["tail", "segment"],
                   help="held-out frames to evaluate (default: the run's own split from its "
                        "split.json; another split may include trained frames: metrics.json then "
                        "has a split_note)")
    _add_device(p)
    p.set_defaults(func=cmd_evaluate)


def _add_create_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``create``."""
    p = sub.add_parser("create", help="one video -> a live avatar: capture -> train -> export -> "
                                      "fit-mda, skipping what is already done (run it again "
                                      "after an interruption)")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="subject directory to create or continue")
    p.add_argument("--minutes", type=_positive(float), default=None,
                   help="total training minutes, counted over interruptions (default 20 unless "
                        "--steps)")
    p.add_argument("--steps", type=_positive(int), default=None, help="total training steps")
    p.add_argument("--preset", default="cpu-256",
                   help="training preset: cpu-256 | cpu-256-v1 | gpu-512 | paper-1024")
    p.add_argument("--run", default="default", help="run name under SUBJECT/runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override (a new run only), repeatable")
    p.add_argument("--live", action="store_true", help="open the live app on the avatar at the end")
    _add_device(p)
    p.set_defaults(func=cmd_create)


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="capture -> train -> export -> drive on the bundled videos")
    p.add_argument("-o", "--output", default="demo_out", help="working directory")
    p.add_argument("--minutes", type=_positive(float), default=20.0, help="training minutes")
    _add_device(p)
    p.set_defaults(func=cmd_demo)


def _add_doctor_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``doctor``."""
    p = sub.add_parser("doctor", help="what this machine can do (CUDA, ONNX Runtime, TensorRT, "
                                       "rasterizers, MediaPipe, Anny, weights, virtual camera) "
                                       "and the one line that fixes each missing piece")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_doctor)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench WHAT [SUBJECT]``."""
    p = sub.add_parser("bench", help="benchmarks: render (components), live (end to end) or "
                                      "quality (held-out metrics against training minutes)")
    p.add_argument("what", choices=["render", "live", "gpu", "quality"])
    p.add_argument("subject", nargs="?", default=None, help="subject directory (bench live / quality)")
    p.add_argument("--resolution", type=int, action="append", default=None, help="repeatable")
    p.add_argument("--backend", default="auto", choices=("auto",) + RENDER_BACKENDS,
                   help=BACKEND_HELP)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                   help="bench live: run for MINUTES on the looping source and report resident "
                        "memory and fps per minute (growth after the first minute, fps trend)")
    p.add_argument("--sequential", action="store_true",
                   help="bench live: run the stages one after another instead of the pipeline")
    p.add_argument("--split-pose", action="store_true",
                   help="bench live: the fit and the maps as two pipeline stages (four in all) "
                        "instead of one; not faster on 2 cores (runtime.pipeline)")
    p.add_argument("--no-pacing", action="store_true",
                   help="bench live: the pipeline's stages start as soon as their output slot is "
                        "empty, instead of just in time for the next stage (for comparison)")
    p.add_argument("--preset", default=None,
                   help="bench render: training preset of the renderer (default paper-1024); "
                        "bench quality: training preset (default cpu-256)")
    p.add_argument("--minutes", type=float, nargs="+", default=None, metavar="M",
                   help="bench quality: training budgets in minutes, one run resumed at each "
                        "(default 2 5 10 20)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="bench quality: training config override (repeatable)")
    p.add_argument("--holdout", default=None, choices=["tail", "segment"],
                   help="bench quality: held-out split (default tail)")
    p.add_argument("--out", default=None,
                   help="bench quality: output folder (default SUBJECT/runs/RUN/quality); "
                        "bench gpu: report folder (default ./bench_gpu); bench live --soak: "
                        "also write the JSON report to this file")
    p.add_argument("--run-prefix", default="bench-quality",
                   help="bench quality: run name prefix; the run is PREFIX-PRESET-HOLDOUT (a "
                        "number is added when it exists)")
    p.add_argument("--video", default=None,
                   help="bench gpu: driving video of the live section (default: the subject's)")
    p.add_argument("--train-step", action="store_true",
                   help="bench render: also time one forward+backward and report its peak memory")
    p.add_argument("--no-onnx", action="store_true",
                   help="bench render: skip the onnxruntime timings")
    p.add_argument("--background", default="learned", metavar="MODE",
                   help="bench live: output background as in `live` (learned | transparent | "
                        "#RRGGBB | IMAGE); its composition is timed with the render stage")
    p.add_argument("--framing", default=None, choices=["full", "upper", "head"],
                   help="bench live: place the avatar in an --out-size frame, as in `live`")
    p.add_argument("--zoom", type=float, default=1.0, help="bench live: framing zoom")
    p.add_argument("--out-size", default="1280x720", metavar="WxH",
                   help="bench live: framed output size (default 1280x720)")
    p.add_argument("--ort-profile", action="store_true",
                   help="bench render: per-op ONNX Runtime profile of the exported renderer "
                        "(top 15 op types: ms/frame, %%, count; default resolution 256; --out "
                        "keeps the trace and writes ort_profile_PRESET_S.json/.md there)")
    _add_device(p)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``ram-avatar`` argument parser: the built-in verbs, the motion verbs and the plug-ins."""
    parser = argparse.ArgumentParser(prog="ram-avatar", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_verb in (
        _add_capture_parser,
        _add_body_model_parser,
        _add_info_parser,
        _add_train_parser,
        _add_drive_parser,
        _add_evaluate_parser,
        _add_create_parser,
        _add_demo_parser,
        _add_doctor_parser,
        _add_bench_parser,
    ):
        add_verb(sub)

    from ram_avatar.motion.cli import register as register_motion  # train-prior, fit-mda, retarget

    register_motion(sub)

    for ep in entry_points(group="ram_avatar.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # optional extra not installed (e.g. the Qt app)
            log.debug("command plug-in %s unavailable: %s", ep.name, e)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for train --nproc-per-node
    from ram_avatar.utils import setup_logging

    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except RamAvatarError as e:
        log.error("%s", e)
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: outputs written so far are intact; re-run to resume\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
