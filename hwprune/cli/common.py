"""What every subcommand shares: progress bars on stderr, the measurement store, output as text or
JSON, and argument types."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


def progress_bar():
    from tqdm import tqdm

    def bar(iterable, desc="", unit="it", total=None):
        return tqdm(iterable, desc=desc, unit=unit, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=None)
    return bar


def open_store(args):
    from profilers import MeasurementStore
    return MeasurementStore(args.store) if args.store else MeasurementStore()


def shape_arg(text):
    try:
        dims = tuple(int(v) for v in text.split(","))
        if not dims or min(dims) <= 0:
            raise ValueError
        return dims
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} is not N,C,H,W positive integers") from None


def positive_arg(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return v


def emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=float) if args.json else text)
