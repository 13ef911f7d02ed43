"""`python -m profiler env [--device cuda|cpu]`: what a result line records about this machine."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available, else cpu")


def main(args: argparse.Namespace) -> int:
    import torch

    from profiler.measure.env import collect_env

    if args.device == "cuda" and not torch.cuda.is_available():
        import sys

        print("error: --device: 'cuda' is not available on this machine; allowed here: cpu", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(collect_env(device), indent=2))
    return 0
