"""Block pruning benchmark: budgets only removing whole residual blocks
reaches, and accuracy with blocks against channels only.

Part ``reach``: for each ``DEVICE:FRACTION`` of ``--reach`` (default
resnet56 at 50 % on torch-cpu-1t, 25 % and 30 % on ort-cpu-1t), the engine
with ``granularity="channel"`` (its error where the budget is below the fastest
channel-only network it measures: that network's share of the original), and
with ``granularity="both"`` through :func:`bench_budget.bench_network`
(``budget_fraction``, the pruned network re-measured against the original in
fresh sessions, alternating blocks, to +-2 %; ratio = re-measured share /
budget, band [0.90, 1.03]).

Part ``accuracy``: per seed, the model trained on the digits
(:func:`bench_accuracy.train_original`), pruned at every ``--budgets``
fraction on ``--device`` with ``channel`` and with ``both`` (l1 channel
scores; block scores from the loss rise with each block skipped on training
batches), every pruned network fine-tuned the same way
(:func:`bench_accuracy.finetuned_accuracy`: distillation from the trained
model) and evaluated on the held-out split, its ratio re-measured
(:class:`bench_accuracy.BlockRatio`). Where channel-only falls back
(:func:`hwprune.loop.reach.prune_within_reach`), both are held to the share
it used.

Writes ``bench_blocks.json`` and ``bench_blocks.md`` (``bench_blocks_load.*``
with ``--load``) into ``--out`` after each row; a part run replaces that
part's rows (``--append`` adds to them). Bad arguments: ``error: ...``, exit 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

BAND = (0.90, 1.03)
GRANULARITIES = ("channel", "both")
DEFAULT_REACH = ["torch-cpu-1t:0.5", "ort-cpu-1t:0.25", "ort-cpu-1t:0.3"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["reach", "accuracy", "all"], default="all")
    p.add_argument("--model", default="resnet56", help="zoo model (default resnet56)")
    p.add_argument("--reach", nargs="+", default=DEFAULT_REACH, metavar="DEVICE:FRACTION",
                   help=f"part reach: budgets as device:fraction of the baseline (default {' '.join(DEFAULT_REACH)})")
    p.add_argument("--device", default="ort-cpu-1t", help="part accuracy: device (default ort-cpu-1t)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.6, 0.7],
                   help="part accuracy: fractions of the measured latency (default 0.6 0.7: channel-only's "
                        "fastest resnet56 measured 54-56 %% on ort-cpu-1t here, so 50 %% is below it)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4, help="training of the original (default 4)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning of every pruned network (default 2)")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--load", action="store_true", help="run under a co-running load: another process streams a "
                   "256 MB array through memory all along")
    p.add_argument("--append", action="store_true", help="add this run's rows to the part's rows in the results "
                   "(a rerun) instead of replacing them")
    p.add_argument("--store", default=None, help="measurement store (default: a fresh temp file)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"))
    args = p.parse_args(argv)
    try:
        args.reach_pairs = [(d, float(f)) for d, f in (s.rsplit(":", 1) for s in args.reach)]
    except ValueError:
        p.error(f"--reach takes DEVICE:FRACTION, e.g. ort-cpu-1t:0.3; got {' '.join(args.reach)}")
    if any(not 0 < f < 1 for f in args.budgets + [f for _, f in args.reach_pairs]):
        p.error("fractions must lie in (0, 1)")
    if args.epochs < 1 or args.finetune_epochs < 1:
        p.error("epochs must be at least 1")
    return args


# ---------------------------------------------------------------- part reach

def channel_reach(model, x, device: str, frac: float, store, log) -> dict:
    """The engine with channels only at ``frac``: reached, or its error and the fastest network's share."""
    from hwprune.errors import UserError
    from hwprune.loop.engine import prune
    t = time.perf_counter()
    try:
        res = prune(model, x, device, budget_fraction=frac, store=store, granularity="channel")
    except UserError as exc:
        out = {"reached": False, "error": str(exc), "fastest": getattr(exc, "fastest", ""),
               "fastest_ms": getattr(exc, "fastest_ms", None), "baseline_ms": getattr(exc, "baseline_ms", None),
               "fastest_frac": getattr(exc, "fastest_fraction", None), "prune_wall_s": time.perf_counter() - t}
        log(f"  channel-only @ {frac:.2f}: error: {exc}")
        return out
    rel = res.measured_ms / res.baseline_ms
    log(f"  channel-only @ {frac:.2f}: reached, engine measured {rel:.3f} x")
    return {"reached": True, "engine_rel": rel, "params_after": res.stats.get("params_after"),
            "fastest_frac": res.stats.get("fastest_ms") / res.baseline_ms, "prune_wall_s": time.perf_counter() - t}


def run_reach(args, store, log, save) -> list[dict]:
    from bench_budget import bench_network

    from hwprune import devices, zoo
    rows = []
    for device in dict.fromkeys(d for d, _ in args.reach_pairs):
        fracs = [f for d, f in args.reach_pairs if d == device]
        dev = devices.get(device)
        model, x = zoo.create(args.model)
        log(f"[reach] {args.model} on {device}: {' '.join(f'{f:.2f}' for f in fracs)}")
        chans = {f: channel_reach(model, x, device, f, store, log) for f in fracs}
        ns = argparse.Namespace(budgets=fracs, relative=True, granularity="both", device=device)
        for row, _ in bench_network(args.model, model, x, ns, store, dev, log):
            frac = row.get("requested_frac") or row["budget_frac"]
            rows.append({"device": device, "fraction": frac, "channel": chans[frac], "both": row,
                         "measured_at": time.strftime("%H:%M UTC", time.gmtime())})
            save(rows)
    return rows


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _mega(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def reach_lines(rows: list[dict]) -> list[str]:
    """The reach part's table and summary (markdown lines)."""
    cols = ["device", "budget", "channel-only (engine)", "both: re-measured share (95 % CI)", "ratio",
            "in band", "engine share", "blocks removed", "params", "FLOPs", "prune s (channel, both)", "at"]
    body, inband, refused = [], 0, 0
    for r in rows:
        c, b = r["channel"], r["both"]
        ch = (f"reached ({_f(c.get('engine_rel'))} x)" if c["reached"] else
              f"refused: fastest {_f(c.get('fastest_frac'))} x" if c.get("fastest_frac") else
              "error: " + c["error"].replace("|", "/"))
        refused += not c["reached"]
        budget = f"{100 * r['fraction']:.0f} %"
        if b.get("requested_frac") is not None:
            budget += f" -> {100 * b['budget_frac']:.0f} % (fallback)"
        if b.get("error"):
            body.append([r["device"], budget, ch, "error: " + b["error"].replace("|", "/")] + [""] * 7
                        + [r.get("measured_at", "")])
            continue
        inband += bool(b["in_band"])
        iv = b.get("remeasured_ratio_interval") or [None, None]
        body.append([r["device"], budget, ch, f"{_f(b['remeasured_rel'])} ({_f(iv[0])}-{_f(iv[1])})",
                     _f(b["ratio"]), "yes" if b["in_band"] else "**NO**", _f(b.get("engine_rel")),
                     f"{len(b.get('removed_blocks') or [])} of {b.get('blocks')}",
                     f"{_mega(b['params_before'])}->{_mega(b['params_after'])}",
                     f"{_mega(b['flops_before'])}->{_mega(b['flops_after'])}",
                     f"{_f(c['prune_wall_s'], '.0f')}, {_f(b['prune_wall_s'], '.0f')}", r.get("measured_at", "")])
    summary = (f"channel-only refused {refused} of {len(rows)} budgets (below its fastest network); with blocks "
               f"{inband} of {len(rows)} re-measured in [{BAND[0]:.2f}, {BAND[1]:.2f}] of the budget")
    return [common.md_table(cols, body), "", f"**{summary}**"]


# ---------------------------------------------------------------- part accuracy

def accuracy_seed(seed, args, dev, store, log) -> tuple[dict, list[dict]]:
    from bench_accuracy import BlockRatio, finetuned_accuracy, size_of, train_original

    from hwprune.errors import UserError
    from hwprune.latency.profiling import Profiler
    from hwprune.loop.reach import prune_within_reach
    model, x, tr, te, base = train_original(args.model, seed, args.epochs)
    meter = BlockRatio(Profiler(dev, store), model, (x,))
    base["ms"] = meter.reference_ms
    log(f"[seed {seed}] trained {args.epochs} epochs in {base['train_s']:.0f} s: accuracy "
        f"{base['accuracy']:.4f}, {base['ms']:.3f} ms")
    rows = []
    for frac in args.budgets:
        used, note = frac, ""
        for gran in GRANULARITIES:
            row = {"seed": seed, "fraction": frac, "granularity": gran}
            t = time.perf_counter()
            try:
                res, choice = prune_within_reach(model, x, args.device, used, importance_name="l1", data=tr,
                                                 store=store, granularity=gran)
            except UserError as exc:
                log(f"  [{frac:.2f} {gran}] error: {exc}")
                rows.append({**row, "error": str(exc)})
                continue
            if choice.fallback:
                used, note = choice.fraction, choice.reason
                log(f"  [{frac:.2f} {gran}] {choice.text}")
            prune_s = time.perf_counter() - t
            ratio, est = meter.ratio(res.model)
            flops, params = size_of(res.model, x)
            acc, ft_s = finetuned_accuracy(res.model, model, tr, te, args, seed)
            row.update({"used_fraction": used, "budget_note": note, "ratio": ratio,
                        "ratio_interval": [est.ratio_lo, est.ratio_hi], "in_band": BAND[0] <= ratio / used <= BAND[1],
                        "engine_rel": res.measured_ms / res.baseline_ms, "accuracy": acc, "params": params,
                        "flops": flops, "blocks": res.stats.get("blocks"),
                        "removed_blocks": res.stats.get("removed_blocks", []), "prune_s": prune_s, "finetune_s": ft_s})
            rows.append(row)
            log(f"  [{frac:.2f} {gran}] {ratio:.3f} x (engine {row['engine_rel']:.3f}), "
                f"{len(row['removed_blocks'])} blocks removed, {params} params, accuracy {acc:.4f} "
                f"(prune {prune_s:.0f} s, fine-tune {ft_s:.0f} s)")
    return base, rows


def _pm(vals) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.mean(vals):.2f} +- {100 * sd:.2f}"


def accuracy_table(rows: list[dict], fractions) -> tuple[list[dict], list[str]]:
    """Per (fraction, granularity): means over seeds; per fraction: which wins, and by how much."""
    table, summary = [], []
    for frac in fractions:
        per = {}
        for gran in GRANULARITIES:
            rs = [r for r in rows if r["fraction"] == frac and r["granularity"] == gran]
            ok = [r for r in rs if "error" not in r]
            e = {"fraction": frac, "granularity": gran, "n": len(ok), "runs": len(rs),
                 "used_fractions": sorted({r["used_fraction"] for r in ok})}
            if ok:
                acc = [r["accuracy"] for r in ok]
                e.update({"accuracy": acc, "seeds": [r["seed"] for r in ok], "accuracy_mean": statistics.mean(acc),
                          "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                          "ratio": [r["ratio"] for r in ok], "all_in_band": all(r["in_band"] for r in ok),
                          "all_meet": all(r["ratio"] <= r["used_fraction"] for r in ok),
                          "params": statistics.mean(r["params"] for r in ok),
                          "flops": statistics.mean(r["flops"] for r in ok),
                          "removed": [len(r["removed_blocks"]) for r in ok], "blocks": ok[0].get("blocks")})
            per[gran] = e
            table.append(e)
        summary.append(verdict(frac, per["channel"], per["both"]))
    return table, summary


def verdict(frac: float, ch: dict, both: dict) -> str:
    used = sorted(set(ch["used_fractions"]) | set(both["used_fractions"]))
    head = f"{100 * frac:.0f} %" + (f" (held to {', '.join(f'{100 * u:.0f} %' for u in used)})"
                                    if used and used != [frac] else "") + ": "
    if not ch["n"] or not both["n"]:
        return head + f"no comparison (results: channel-only {ch['n']}/{ch['runs']}, both {both['n']}/{both['runs']})"
    mine = dict(zip(ch["seeds"], ch["accuracy"]))
    diffs = [a - mine[s] for s, a in zip(both["seeds"], both["accuracy"]) if s in mine]
    text = (f"channel-only {_pm(ch['accuracy'])} % at {statistics.mean(ch['ratio']):.3f} x, both "
            f"{_pm(both['accuracy'])} % at {statistics.mean(both['ratio']):.3f} x "
            f"({statistics.mean(both['removed']):.1f} blocks removed); ")
    d = statistics.mean(diffs) if diffs else 0.0
    if not diffs or d == 0:
        return head + text + "a tie" if diffs else head + text + "no seed with both results"
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    up, down = sum(x > 0 for x in diffs), sum(x < 0 for x in diffs)
    win, lose = ("both", "channel-only") if d > 0 else ("channel-only", "both")
    paired = (f"{win} ahead of {lose} by {100 * abs(d):.2f} +- {100 * sd:.2f} points paired by seed (both higher "
              f"on {up} of {len(diffs)} seeds, lower on {down})")
    if len(diffs) > 1 and len(diffs) in (up, down):
        return head + text + f"{win} wins on every seed: " + paired
    return head + text + "no clear winner: " + paired


def accuracy_lines(part: dict) -> list[str]:
    cfg, bases = part["config"], part["originals"]
    rows = [["-", "original", "1.000", "-", _pm([b["accuracy"] for b in bases]),
             _mega(statistics.mean(b["params"] for b in bases)), _mega(statistics.mean(b["flops"] for b in bases)),
             "-", f"{len(bases)}/{len(bases)}"]] if bases else []
    for t in part["table"]:
        budget = f"{100 * t['fraction']:.0f} %" + "".join(f" -> {100 * u:.0f} %" for u in t["used_fractions"]
                                                         if u != t["fraction"])
        if not t["n"]:
            rows.append([budget, t["granularity"]] + ["-"] * 6 + [f"0/{t['runs']}"])
            continue
        rs = t["ratio"]
        band = "yes" if t["all_in_band"] else "**no**"
        rows.append([budget, t["granularity"], f"{statistics.mean(rs):.3f} ({min(rs):.3f}-{max(rs):.3f})", band,
                     _pm(t["accuracy"]), _mega(t["params"]), _mega(t["flops"]),
                     f"{statistics.mean(t['removed']):.1f} of {t['blocks']}" if t["blocks"] else "-",
                     f"{t['n']}/{t['runs']}"])
    lines = [f"- device {cfg['device']}; seeds {' '.join(map(str, cfg['seeds']))}; original trained "
             f"{cfg['epochs']} epochs (lr 0.05); every pruned network fine-tuned {cfg['finetune_epochs']} epochs "
             f"with distillation from it (lr {cfg['finetune_lr']}, cosine); greedy, l1 channel scores, block scores "
             f"from the loss rise with each block skipped on 4 training batches; part time {part['total_s']:.0f} s",
             "- ratio: pruned / original in fresh sessions, alternating blocks, to +-2 % (mean over seeds, range); "
             "in band: ratio / budget in [0.90, 1.03] on every seed; accuracy on the held-out 20 % (360 images) "
             "after the last epoch, mean +- standard deviation over seeds, in %", "",
             common.md_table(["budget", "granularity", "ratio (range)", "in band", "accuracy %", "params", "FLOPs",
                              "blocks removed", "seeds"], rows), ""]
    return lines + [f"**{s}**" for s in part["summary"]]


def render_md(results: dict) -> str:
    lines = ["# Block pruning: budgets channel pruning cannot reach, and accuracy against channels only", ""]
    for key, title in (("reach", "Reach"), ("accuracy", "Accuracy on the digits")):
        part = results.get(key)
        if not part:
            continue
        h = part["header"]
        lines += [f"## {title} ({part['model']})", ""] + common.header_lines(h) + [f"- code: commit {h['commit']}"]
        if key == "reach":
            lines += ["- channel-only: the engine's answer with `granularity='channel'` (its fastest network's "
                      "share of the original where it refuses); both: `granularity='both'`, re-measured against "
                      "the original in fresh sessions, alternating blocks, to +-2 %; ratio = re-measured share / "
                      f"budget, band [{BAND[0]:.2f}, {BAND[1]:.2f}]; part time {part['total_s']:.0f} s", ""]
            lines += reach_lines(part["rows"])
        else:
            lines += accuracy_lines(part)
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    from hwprune.errors import UserError
    from profilers.store import StoreError
    args = parse_args(argv)
    with common.CoRunningLoad(args.load):
        try:
            return run(args)
        except (UserError, StoreError) as exc:  # bad input
            print(f"error: {exc}", file=sys.stderr)
            return 2


def run(args) -> int:
    import torch

    from hwprune import devices
    from hwprune.latency.grid import resolve_grid, with_grid
    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, flush=True)
    out = Path(args.out)
    stem = "bench_blocks_load" if args.load else "bench_blocks"
    path = out / f"{stem}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    parts = ["reach", "accuracy"] if args.part == "all" else [args.part]
    with common.bench_store(args.store) as store:
        for part in parts:
            t0 = time.perf_counter()
            header = {**common.machine_header(), "co_running_load": args.load, "commit": common.commit_id()}
            old = results.get(part, {}).get("rows", []) if args.append else []

            def save(rows, extra=None, part=part, header=header, t0=t0, old=old):
                results[part] = {"header": header, "model": args.model, "total_s": time.perf_counter() - t0,
                                 "rows": old + rows, **(extra or {})}
                common.write_json(path, results)
                common.write_atomic(out / f"{stem}.md", render_md(results))
            if part == "reach":
                run_reach(args, store, log, save)
                continue
            dev = devices.get(args.device)
            dev = with_grid(dev, resolve_grid(dev, store))
            config = {k: getattr(args, k) for k in ("device", "budgets", "seeds", "epochs", "finetune_epochs",
                                                      "finetune_lr")}
            bases = [] + (results.get(part, {}).get("originals", []) if args.append else [])
            rows = []
            for seed in args.seeds:
                base, r = accuracy_seed(seed, args, dev, store, log)
                bases.append(base)
                rows += r
                table, summary = accuracy_table(old + rows, args.budgets)
                save(rows, {"config": config, "originals": bases, "table": table, "summary": summary})
            for s in results[part]["summary"]:
                log(s)
    print(render_md(results))
    log(f"wrote {path} and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
