"""Accuracy at equal measured latency: hwprune's criteria against Torch-Pruning.

For every seed: resnet20 is trained on the digits (:mod:`hwprune.datasets`) and its
latency measured on the device. For every budget fraction (of that measured
latency) it is pruned by

- hwprune with each importance criterion (``prune(..., budget_fraction=frac,
  importance_name=c, data=training batches)``, the closed loop);
- Torch-Pruning's ``MagnitudePruner`` (L1, uniform ratio, ``round_to`` = the
  device's channel step, the classifier ignored): ratios 0.05..0.80 are
  measured on the device and the smallest ratio whose measured latency meets
  the budget is taken (its best use: swept and measured, not a guessed ratio);
- hwprune with a FLOPs bound instead of a latency budget (the selection
  ``hwprune prune --max-flops F`` makes: the same selector, grid and floors,
  ``l1``): the bound is bisected until the largest one whose network meets the
  budget when measured.

Where a fraction is below the fastest network the engine measures on this
host, the budget falls back to the share midway between that network and the
full one (:func:`hwprune.loop.reach.prune_within_reach`, decided by the first
criterion), every method of that row is held to the share used, and the table
and summary say so. Torch-Pruning's ``round_to`` and the FLOPs bound use the
channel grid measured on this host (:func:`hwprune.latency.grid.resolve_grid`).

Budgets are fractions of the original's latency measured against each
network (a ratio), since this host's absolute speed drifts by up to
+-10 % within minutes: the engine gets ``budget_fraction`` (its budget follows
its own measurements of the original), and the baselines are chosen on ratios
measured the same way.

Every pruned network gets the same fine-tuning (distillation from the trained
model, ``--finetune-epochs``, cosine schedule) and is evaluated on the held-out
split after its last epoch (no selection on the test split). Latency: every
pruned network is re-measured with the original as a user measures (fresh
sessions, alternating blocks, until the 95 % interval of the ratio is within
+-2 %: :class:`BlockRatio`, as the engine measures its plans; a network whose
interval contains the budget is measured again once every method has its first
reading, and the two readings pooled); ms = that ratio x the original's median
block. The Torch-Pruning sweep and the FLOPs-bound
search are measured the same way. Writes ``bench_accuracy.json`` and
``bench_accuracy.md`` (``bench_accuracy_load.*`` with ``--load``) into ``--out``; the exit code is 0 whatever the
comparison shows.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

CRITERIA = ["l1", "l2", "bn-scale", "taylor", "cpmc", "ccp", "dcp"]
TP_RATIOS = [round(0.05 * i, 2) for i in range(1, 17)]
MODEL = "resnet20"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.3],
                   help="budgets as fractions of the measured latency (default 0.5 0.3)")
    p.add_argument("--criteria", nargs="+", default=CRITERIA, choices=CRITERIA)
    p.add_argument("--train-epochs", type=int, default=3, help="training of the original (default 3)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning of every pruned network (default 2)")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--selector", default="greedy", choices=["greedy", "knapsack", "qcqp"])
    p.add_argument("--no-baselines", action="store_true", help="skip Torch-Pruning and the FLOPs bound")
    p.add_argument("--device", default="ort-cpu-1t")
    p.add_argument("--load", action="store_true", help="run under a co-running load: another process streams a "
                   "256 MB array through memory all along, as a shared cloud host's neighbour does")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    p.add_argument("--store", help="measurement store (default: $HWPRUNE_STORE or ~/.cache/hwprune)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"))
    args = p.parse_args(argv)
    if any(not 0 < f < 1 for f in args.fractions):
        p.error("fractions must lie in (0, 1)")
    if args.train_epochs < 1 or args.finetune_epochs < 1:
        p.error("epochs must be at least 1")
    return args


def size_of(model, x) -> tuple[int, int]:
    """(FLOPs as hwprune counts them: 2 x MACs of conv/linear layers, parameters)."""
    from hwprune.graph.space import PruningSpace
    from hwprune.loop.engine import count_params
    space = PruningSpace(copy.deepcopy(model).eval(), (x,))
    return int(sum(s.flops for s in space.specs(space.full_choice()))), count_params(model)


def tp_prune(model, x, ratio: float, round_to: int):
    import torch_pruning as tp
    m = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[m.fc], round_to=round_to)
    pruner.step()
    return m.eval()


def flops_selection(model, x, dev, max_flops: float):
    """The network ``hwprune prune --max-flops`` selects (greedy, l1, the device grid and floors)."""
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.graph.surgery import apply_kept
    from hwprune.importance import criteria as importance
    from hwprune.select.problem import Constraints, Problem, floor_options
    from hwprune.select.selectors import select
    space = PruningSpace(model, (x,))
    cons = Constraints(max_flops=max_flops)
    options = floor_options(space, device_options(space, dev), dev.step_channels, cons)
    scores = importance.compute("l1", space)
    problem = Problem(space, options, scores, cons)
    if problem.violated(problem.smallest()):
        return None
    return apply_kept(space, select("greedy", problem).kept).eval()


def search_flops(model, x, dev, meter, frac, log):
    """Bisect the FLOPs bound for the largest network whose measured ratio meets ``frac``."""
    full, _ = size_of(model, x)
    lo, hi, best, probes = 0.0, float(full), None, []
    for _ in range(7):
        mid = (lo + hi) / 2
        net = flops_selection(model, x, dev, mid)
        if net is None:
            lo = mid
            continue
        ratio = meter.ratio(net)[0]
        probes.append({"max_flops": mid, "ratio": ratio})
        if ratio <= frac:
            lo, best = mid, (mid, net, ratio)
        else:
            hi = mid
    log(f"    flops bound: {len(probes)} probes, best {best[0] / full if best else float('nan'):.3f} of FLOPs")
    return best, probes


def finetuned_accuracy(student, teacher, tr, te, args, seed) -> tuple[float, float]:
    from hwprune.train.finetune import FinetuneConfig, finetune
    t = time.perf_counter()
    res = finetune(student, tr, te, FinetuneConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=seed),
                   teacher=teacher)
    return res.val_accuracy, time.perf_counter() - t


class BlockRatio:
    """Ratios to the original as a user measures them: fresh sessions in
    alternating blocks until the 95 % interval is within +-2 %
    (:func:`profilers.blocks.ratio_in_blocks`), timed as the engine times the
    device (the thread's CPU time on one-thread CPU runtimes)."""

    def __init__(self, profiler, model, example_inputs):
        from dataclasses import replace

        from hwprune.latency.profiling import model_protocol
        from profilers.blocks import BLOCK_PROTOCOL, block_runner
        protocol = model_protocol(profiler.device)
        self.block = BLOCK_PROTOCOL if protocol is None else replace(BLOCK_PROTOCOL, clock=protocol.clock)
        self.runtime, self.inputs = profiler.runtime, example_inputs
        self.reference = block_runner(self.runtime, model, example_inputs, self.block)
        self.reference_ms = statistics.median(self.reference() for _ in range(3))

    def ratio(self, net) -> tuple[float, object]:
        from profilers.blocks import block_runner, ratio_in_blocks
        est = ratio_in_blocks(self.reference, block_runner(self.runtime, net, self.inputs, self.block))
        return est.ratio, est


def train_original(name: str, seed: int, epochs: int):
    """Zoo model ``name`` (10 classes) trained ``epochs`` on the digits with ``seed``:
    (model, example input, training loader, test loader, its row: accuracy, time, FLOPs, params)."""
    from hwprune import zoo
    from hwprune.datasets import digits_loaders
    from hwprune.train.loop import evaluate, train
    tr, te = digits_loaders(batch_size=64, seed=seed)
    model, x = zoo.create(name, num_classes=10, seed=seed)
    t = time.perf_counter()
    train(model, tr, epochs, lr=0.05, seed=seed)
    base = {"seed": seed, "accuracy": evaluate(model, te), "train_s": time.perf_counter() - t}
    base["flops"], base["params"] = size_of(model, x)
    return model, x, tr, te, base


def run_seed(seed, args, dev, store, log) -> tuple[dict, list[dict]]:
    from hwprune.errors import UserError
    from hwprune.latency.profiling import Profiler
    from hwprune.loop.reach import prune_within_reach
    model, x, tr, te, base = train_original(MODEL, seed, args.train_epochs)
    meter = BlockRatio(Profiler(dev, store), model, (x,))
    base["ms"] = meter.reference_ms
    log(f"[seed {seed}] trained {args.train_epochs} epochs in {base['train_s']:.0f} s: accuracy "
        f"{base['accuracy']:.4f}, {base['ms']:.3f} ms")
    tp_sweep = []
    if not args.no_baselines:
        for r in TP_RATIOS:
            net = tp_prune(model, x, r, dev.step_channels)
            tp_sweep.append((r, net, meter.ratio(net)[0]))
        log(f"[seed {seed}] Torch-Pruning sweep: " + ", ".join(f"{r:.2f}->{q:.2f}" for r, _, q in tp_sweep))
    rows = []
    for frac in args.fractions:
        used, note = frac, ""  # the share every method is held to, and why when it is not frac
        cands = []  # (method, detail, model)
        for crit in args.criteria:
            t = time.perf_counter()
            try:
                res, choice = prune_within_reach(model, x, args.device, used, selector=args.selector,
                                                 importance_name=crit, data=tr, store=store)
            except UserError as exc:
                log(f"  [{frac:.2f} {crit}] error: {exc}")
                rows.append({"seed": seed, "fraction": frac, "method": f"hwprune {crit}", "error": str(exc)})
                continue
            if choice.fallback:
                used, note = choice.fraction, f"{100 * frac:.0f} %: {choice.reason}"
                log(f"  [{frac:.2f} {crit}] {note}")
            log(f"  [{frac:.2f} {crit}] engine measured {res.measured_ms / res.baseline_ms:.3f} x its baseline "
                f"{res.baseline_ms:.3f} ms in {time.perf_counter() - t:.0f} s")
            cands.append((f"hwprune {crit}", {"engine_ratio": res.measured_ms / res.baseline_ms,
                                              "prune_s": time.perf_counter() - t}, res.model))
        budget = used * base["ms"]
        if tp_sweep:
            meeting = [s for s in tp_sweep if s[2] <= used]
            r, net, q = min(meeting, key=lambda s: s[0]) if meeting else min(tp_sweep, key=lambda s: s[2])
            cands.append(("Torch-Pruning", {"pruning_ratio": r, "sweep_ratio": q, "met_in_sweep": bool(meeting)},
                          copy.deepcopy(net)))
            best, probes = search_flops(model, x, dev, meter, used, log)
            if best is not None:
                cands.append(("hwprune FLOPs bound (l1)", {"max_flops": best[0], "flops_frac": best[0] / base["flops"],
                                                          "probes": probes}, best[1]))
        firsts = [meter.ratio(c[2])[1] for c in cands]
        ests = [common.pooled([e, meter.ratio(c[2])[1]]) if common.near_edge(e, used, (1.0,)) else e
                for c, e in zip(cands, firsts)]
        for (method, detail, net), first, est in zip(cands, firsts, ests):
            flops, params = size_of(net, x)
            acc, ft_s = finetuned_accuracy(net, model, tr, te, args, seed)
            ratio = est.ratio
            row = {"seed": seed, "fraction": frac, "method": method, "ratio": ratio, "ms": ratio * meter.reference_ms,
                   "ratio_interval": [est.ratio_lo, est.ratio_hi], "readings": 1 + (est is not first),
                   "first_ratio": first.ratio, "budget_ms": budget, "meets": ratio <= used, "accuracy": acc,
                   "flops": flops, "params": params, "finetune_s": ft_s, **detail,
                   **({"used_fraction": used, "budget_note": note} if note else {})}
            rows.append(row)
            log(f"  [{frac:.2f} {method}] {row['ms']:.3f} ms ({ratio:.3f} x), accuracy {acc:.4f}, "
                f"{params} params, fine-tuned in {ft_s:.0f} s")
    return base, rows


def _ms(vals):
    return f"{statistics.mean(vals):.3f}"


def _pm(vals, scale=100.0, fmt=".2f"):
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{scale * statistics.mean(vals):{fmt}} +- {scale * sd:{fmt}}"


def _entry(frac, method, rs) -> dict:
    ok = [r for r in rs if "error" not in r]
    e = {"fraction": frac, "method": method, "n": len(ok), "refused": len(rs) - len(ok),
         "errors": [r["error"] for r in rs if "error" in r],
         "used_fractions": sorted({r["used_fraction"] for r in ok if "used_fraction" in r}),
         "budget_notes": sorted({r["budget_note"] for r in ok if "budget_note" in r})}
    if ok:
        e.update({"ms": [r["ms"] for r in ok], "ratio": [r["ratio"] for r in ok],
                  "accuracy": [r["accuracy"] for r in ok], "params": [r["params"] for r in ok],
                  "flops": [r["flops"] for r in ok], "all_meet": all(r["meets"] for r in ok),
                  "met_in_sweep": all(r.get("met_in_sweep", True) for r in ok),
                  "accuracy_mean": statistics.mean(r["accuracy"] for r in ok)})
    return e


def _verdict(frac, per) -> str:
    used = sorted({u for v in per.values() for u in v.get("used_fractions", [])})
    head = f"{100 * frac:.0f} % of the latency" + (
        f" (below the fastest network on this host; held to {', '.join(f'{100 * u:.0f} %' for u in used)} "
        f"instead, midway between it and the full network)" if used else "") + ": "
    ours = [v for k, v in per.items() if k.startswith("hwprune ") and "FLOPs" not in k]
    tp = per.get("Torch-Pruning")
    full = [v for v in ours if v["n"] and not v["refused"]]
    if tp is None or not tp["n"]:
        return head + "no Torch-Pruning result"
    tp_text = (f"Torch-Pruning {_pm(tp['accuracy'])} % at {statistics.mean(tp['ratio']):.3f} x "
               f"({_ms(tp['ms'])} ms)" + ("" if tp["met_in_sweep"] else
                                           ", its fastest ratio, which does not meet the budget"))
    if not full:
        refused = sum(v["refused"] for v in ours)
        runs = sum(v["refused"] + v["n"] for v in ours)
        return (head + f"hwprune refused the budget in {refused} of {runs} runs (below the smallest network "
                f"the device grid allows) and no criterion met it on every seed; {tp_text}")
    best = max(full, key=lambda v: v["accuracy_mean"])
    ok = best["accuracy_mean"] >= tp["accuracy_mean"]
    r_best, r_tp = statistics.mean(best["ratio"]), statistics.mean(tp["ratio"])
    within = "both within the budget on every seed" if best["all_meet"] and tp["all_meet"] else (
        "hwprune within the budget on every seed, Torch-Pruning not" if best["all_meet"] else
        "hwprune over the budget on some seed" + ("" if not tp["all_meet"] else ", Torch-Pruning within"))
    return (head + f"best hwprune criterion {best['method'][8:]} {_pm(best['accuracy'])} % at {r_best:.3f} x "
            f"the original ({_ms(best['ms'])} ms); {tp_text}; {within}; hwprune is "
            f"{'at least as' if ok else 'LESS'} accurate, at {'equal or lower' if r_best <= r_tp else 'higher'} "
            f"measured latency than Torch-Pruning")


def aggregate(bases, rows, fractions) -> tuple[list[dict], list[str]]:
    table, summary = [], []
    for frac in fractions:
        methods = list(dict.fromkeys(r["method"] for r in rows if r["fraction"] == frac))
        per = {m: _entry(frac, m, [r for r in rows if r["fraction"] == frac and r["method"] == m]) for m in methods}
        table += list(per.values())
        summary.append(_verdict(frac, per))
    return table, summary


def render_md(header, args, bases, table, summary) -> str:
    base_ms = [b["ms"] for b in bases]
    rows = [["-", "original", _ms(base_ms), "1.000", _pm([b["accuracy"] for b in bases]),
             f"{statistics.mean(b['params'] for b in bases):.0f}",
             f"{statistics.mean(b['flops'] for b in bases) / 1e6:.1f}M", "-", f"{len(bases)}/{len(bases)}"]]
    for t in table:
        runs = f"{t['n']}/{t['n'] + t['refused']}"
        if not t["n"]:
            rows.append([f"{100 * t['fraction']:.0f} %", t["method"], "-", "-", "-", "-", "-",
                         "refused: below the smallest network", runs])
            continue
        meets = "yes" if t["all_meet"] else "**no**"
        if not t["met_in_sweep"]:
            meets = "**no** (fastest ratio)"
        budget = f"{100 * t['fraction']:.0f} %" + "".join(f" -> {100 * u:.0f} %" for u in t.get("used_fractions", []))
        rows.append([budget, t["method"], _ms(t["ms"]), f"{statistics.mean(t['ratio']):.3f}",
                     _pm(t["accuracy"]), f"{statistics.mean(t['params']):.0f}",
                     f"{statistics.mean(t['flops']) / 1e6:.1f}M", meets, runs])
    lines = ["# Accuracy at equal measured latency (resnet20 on digits)", ""] + common.header_lines(header)
    lines += [f"- code: commit {header['commit']}"]
    lines += [f"- device {args.device}; seeds {' '.join(map(str, args.seeds))}; training {args.train_epochs} "
              f"epochs; every pruned network fine-tuned {args.finetune_epochs} epochs with distillation "
              f"(lr {args.finetune_lr}, cosine); selector {args.selector}",
              "- ms: mean over seeds of (pruned / original, measured in fresh sessions, alternating blocks, to a "
              "+-2 % interval; where the interval contained the budget, measured again after the other methods "
              "and the two readings pooled) x the original's ms; ratio = pruned / original; accuracy on the "
              "held-out 20 % (360 images) after the last epoch, mean +- standard deviation over seeds, in %",
              "- Torch-Pruning: MagnitudePruner (L1, uniform ratio, round_to = device step), the smallest ratio "
              "of 0.05..0.80 whose measured latency meets the budget; FLOPs bound: hwprune's greedy l1 "
              "selection under the largest FLOPs bound (bisected) whose network meets the budget",
              f"- total time {header['total_s']:.0f} s", "",
              common.md_table(["budget", "method", "ms", "ratio", "accuracy %", "params", "FLOPs", "meets budget",
                               "seeds"], rows), "",
              "seeds: runs with a result / runs; 'refused': the engine's error, the budget is below the "
              "fastest network measured on this host; 'A % -> B %': A % is below the fastest network measured "
              "here, and every method was held to B %, midway between it and the full network; "
              "means and spreads are over the runs with a result", ""]
    lines += [f"**{s}**" for s in summary] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    with common.CoRunningLoad(args.load):
        return run(args)


def run(args) -> int:
    import torch

    from hwprune import devices
    from profilers import MeasurementStore
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)
    t0 = time.perf_counter()
    header = {**common.machine_header(), "co_running_load": args.load, "device": args.device,
              "torch_threads": args.threads,
              "commit": common.commit_id()}
    from hwprune.latency.grid import resolve_grid, with_grid
    store = MeasurementStore(args.store) if args.store else MeasurementStore()
    dev = devices.get(args.device)
    dev = with_grid(dev, resolve_grid(dev, store))
    header["grid_channels"] = dev.step_channels
    bases, rows = [], []
    for seed in args.seeds:
        base, r = run_seed(seed, args, dev, store, log)
        bases.append(base)
        rows += r
    header["total_s"] = time.perf_counter() - t0
    table, summary = aggregate(bases, rows, args.fractions)
    out = Path(args.out)
    cfg = {k: getattr(args, k) for k in ("seeds", "fractions", "criteria", "train_epochs", "finetune_epochs",
                                           "finetune_lr", "selector", "device", "threads")}
    stem = "bench_accuracy_load" if args.load else "bench_accuracy"
    common.write_json(out / f"{stem}.json", {"header": header, "config": cfg, "originals": bases,
                                                     "rows": [{k: v for k, v in r.items()} for r in rows],
                                                     "table": table, "summary": summary})
    common.write_atomic(out / f"{stem}.md", render_md(header, args, bases, table, summary))
    for s in summary:
        log(s)
    log(f"wrote {out}/{stem}.json and {stem}.md ({header['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
