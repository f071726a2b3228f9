"""``ram-avatar export``: the trained renderer to ONNX (+ parity check), registered as a CLI verb."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb to the ``ram-avatar`` parser."""
    p = sub.add_parser("export", help="export the trained avatar to ONNX (and TensorRT on a GPU)")
    p.add_argument("subject")
    p.add_argument("--run", default="default")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tensorrt", action="store_true", help="also build an fp16 TensorRT engine (GPU)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    from exporters.avatar import export_avatar

    report = export_avatar(a.subject, run_name=a.run, opset=a.opset, tensorrt=a.tensorrt)
    sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
    return 0
