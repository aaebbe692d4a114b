"""``hwprune prune``'s bounds on the command line: latency budgets on one or
more devices, FLOPs, parameters, memory, floors and ceilings, the selector."""
from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return v


class Fraction(float):
    """A budget given as a share of the measured baseline (``50%``)."""


def budget(text: str) -> tuple[str | None, float]:
    """``MS``, ``DEVICE=MS`` or ``PERCENT%`` (of the measured baseline)."""
    device, _, ms = text.rpartition("=")
    if ms.endswith("%"):
        return (device or None, Fraction(_number(ms[:-1]) / 100.0))
    return (device or None, _number(ms))


def budget_kwargs(budget) -> dict:
    """``prune`` keyword arguments for the plain budget."""
    if isinstance(budget, Fraction):
        return {"budget_ms": None, "budget_fraction": float(budget)}
    return {"budget_ms": budget}


def grid_arg(text: str) -> int:
    """A channel grid: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r} is not a positive number of channels")
    return int(text)


def amount(text: str) -> float:
    """A positive count, optionally with a k/M/G suffix (``300M``, ``1.2G``)."""
    scale = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:], 1.0)
    return _number(text[:-1] if scale != 1.0 else text) * scale


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return v


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", help="device the plain --budget-ms is for and the result is reported on "
                    "(default: the first DEVICE=MS budget)")
    sp.add_argument("--budget-ms", type=budget, action="append", default=[], metavar="[DEVICE=]MS",
                    help="latency budget in milliseconds on --device, or DEVICE=MS; repeat for several devices. "
                    "On --device also PERCENT%% of the measured baseline (e.g. 50%%), which follows the "
                    "host's drift")
    sp.add_argument("--max-flops", type=amount, help="FLOPs bound (2 x multiply-accumulates of the conv and "
                    "linear layers), e.g. 40M or 4.1e7")
    sp.add_argument("--max-params", type=amount, help="parameter count bound, e.g. 500k")
    sp.add_argument("--max-memory-mib", type=_number, help="peak activation memory bound in MiB (2^20 bytes): "
                    "the largest input + output of one conv/linear layer, fp32")
    sp.add_argument("--min-ratio", type=fraction, default=0.1, help="every group keeps at least this share "
                    "of its channels, and at least one device step (default 0.1)")
    sp.add_argument("--max-ratio", type=fraction, help="every group keeps at most this share of its channels")
    from hwprune.select.selectors import SELECTORS
    sp.add_argument("--selector", choices=SELECTORS.list(), default="greedy",
                    help="greedy (default), knapsack (HALP) or qcqp (exact MILP of Jeong et al. with HiGHS)")
    sp.add_argument("--time-limit-s", type=_number, default=60.0, help="qcqp: solver time limit per solve "
                    "(default 60)")
    sp.add_argument("--granularity", choices=("channel", "block", "both"), default=None,
                    help="what pruning removes: channel widths, whole residual blocks (a submodule whose output "
                    "is its input plus a branch, replaced by an identity), or both (default: both where the model "
                    "has removable blocks, else channel)")
    sp.add_argument("--grid", type=grid_arg, metavar="N", help="prune on a grid of N channels (default: the "
                    "channel step measured on this host, measured on first use and stored)")
    from hwprune.cli.finetune import add_training_arguments
    from hwprune.importance.criteria import CRITERIA
    sp.add_argument("--importance", default="l1", choices=CRITERIA.list(),
                    help="channel criterion: l1 (default), l2, bn-scale, cpmc; with --data also taylor, ccp, "
                    "dcp")
    sp.add_argument("--data", metavar="D", help="data for taylor/ccp/dcp and fine-tuning: digits, a .npz file "
                    "with x [N,C,H,W] float and y [N] integer labels, or module:function returning "
                    "(train_loader, val_loader)")
    sp.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model this many "
                    "epochs on --data, distilling from the original (default 0: no fine-tuning)")
    add_training_arguments(sp)


def check_data_options(args) -> None:
    """--importance and --finetune-epochs that need --data."""
    from hwprune.errors import UserError
    from hwprune.importance.criteria import CRITERIA
    if args.data is not None:
        return
    if CRITERIA.metadata(args.importance)["needs_data"]:
        raise UserError(f"--importance {args.importance} needs data: add --data digits, --data FILE.npz "
                        f"(x [N,C,H,W] float, y [N] labels) or --data module:function")
    if args.finetune_epochs:
        raise UserError("--finetune-epochs needs --data (digits, a .npz file or module:function)")


def constraints_from_args(args):
    """(the plain --budget-ms for --device or None, Constraints)."""
    from hwprune.errors import UserError
    from hwprune.select.problem import Constraints
    plain = [ms for dev, ms in args.budget_ms if dev is None]
    if plain and not args.device:
        shown = f"{plain[0] * 100:g}%" if isinstance(plain[0], Fraction) else f"{plain[0]:g}"
        raise UserError(f"--budget-ms {shown} needs --device D (or write --budget-ms DEVICE={shown})")
    if len(plain) > 1:
        raise UserError("--budget-ms given twice for --device; give one plain budget, others as DEVICE=MS")
    named = tuple((dev, ms) for dev, ms in args.budget_ms if dev is not None)
    if any(isinstance(ms, Fraction) for _, ms in named):
        raise UserError("a budget in % applies to --device only (--device D --budget-ms 50%); "
                        "give the other devices' budgets in ms")
    cons = Constraints(latency_ms=named, max_flops=args.max_flops, max_params=args.max_params,
                       max_memory_mib=args.max_memory_mib, min_ratio=args.min_ratio, max_ratio=args.max_ratio)
    return (plain[0] if plain else None), cons


def host_text(res) -> str:
    """Lines on the host for ``hwprune prune``'s text output: the grid of each
    device (and whether it was measured now), the primary device's measured
    interval and whether it certifies the budget, the residual blocks removed,
    and drift warnings."""
    st, lines = res.stats, []
    for dev, g in st.get("grid", {}).items():
        took = f", {g['measured_s']:.1f} s" if g.get("measured_s") else ""
        lines.append(f"grid {dev}: {g['step_channels']} channels ({g['detail']}{took})")
    iv = st.get("ratio_interval", {}).get(res.device)
    if iv:
        verdict = ("certified under the budget" if st.get("certified") else "NOT certified under the budget"
                   ) if res.budget_ms is not None else "no latency budget"
        lines.append(f"measured {res.measured_ms:.3f} ms, 95 % interval {iv['measured_lo_ms']:.3f}-"
                     f"{iv['measured_hi_ms']:.3f} ms (+-{100 * iv['half_width_rel']:.1f} %, {iv['rounds']} rounds "
                     f"of alternating blocks): {verdict}")
    if st.get("blocks"):
        removed = st.get("removed_blocks") or []
        lines.append(f"granularity {st.get('granularity')}: removed {len(removed)} of {st['blocks']} residual "
                     f"blocks" + (f" ({', '.join(removed)})" if removed else ""))
    lines += [f"warning: {w}" for w in st.get("warnings", [])]
    return "".join(f"\n{line}" for line in lines)


def frozen_text(frozen) -> str:
    """Lines for ``hwprune prune``'s text output on the channel groups kept whole."""
    if not frozen:
        return ""
    lines = [f"frozen: {len(frozen)} channel group(s) kept whole ({sum(f.channels for f in frozen)} channels); "
             f"the graph cannot prune them safely:"]
    lines += [f"  {f.message()}" for f in frozen]
    return "".join(f"\n{line}" for line in lines)
