"""The rows under the budget benchmark's band: is there a plan keeping more
than the engine's answer that meets the budget? Each plan one grid step
wider (one channel group one option wider, :func:`wider_networks`) is
re-measured as the benchmark measures, until one meets the budget; where
every one is over it the row sits at a latency cliff (a width leaving the
device's alignment turns kernels plain and adds layout conversions,
:func:`check_cliff`)."""
from __future__ import annotations


def wider_networks(model, x, plan: dict, grid: dict) -> list[tuple[str, object]]:
    """The plan with one channel group one option wider on ``grid`` (the
    grid the engine pruned on: ``res.stats["grid"][device]``), each as
    (label, network): the plans keeping more than the engine's answer that
    are closest to it. Which channels the widened group adds does not change
    latency; the first ones not kept are added."""
    from hwprune.graph.space import PruningSpace, group_options
    from hwprune.graph.surgery import apply_kept
    space = PruningSpace(model, x, grouped_modes=plan.get("grouped_modes"))  # the engine's space
    kept = {int(g["gid"]): list(g["kept"]) for g in plan["groups"]}
    removed = plan.get("removed_blocks", [])
    out = []
    for g in space.groups:
        keep = set(kept.get(g.gid, range(g.size)))
        cur = tuple(sum(1 for i in idx if i in keep) for idx in g.seg_index)
        opts = group_options(g, int(grid["step_channels"]), int(grid["min_channels"]),
                             int(grid.get("align_channels") or 0))
        wider = [o for o in opts if sum(o) > sum(cur) and all(a >= b for a, b in zip(o, cur))]
        if not wider:
            continue
        to = min(wider, key=sum)
        add = [i for idx, k, c in zip(g.seg_index, to, cur) for i in [j for j in idx if j not in keep][:k - c]]
        net = apply_kept(space, {**kept, g.gid: sorted(keep | set(add))}, removed)
        out.append((f"group {g.gid} ({g.root}) {sum(cur)}->{sum(to)}", net))
    return out


def check_cliff(row: dict, networks, measure_ratio, log) -> None:
    """For a row under the band: re-measure the plans one grid step wider
    (``measure_ratio(net)`` -> its ratio estimate to the original) until one
    meets the budget (its ratio / fraction at most 1: the row is no cliff, the
    rest need not be measured) and record them; ``cliff``: there are some and
    every one is over the budget, so no plan keeping more than the engine's
    answer meets the budget one step away."""
    wider = []
    for label, net in networks:
        if wider and wider[-1]["ratio"] <= 1.0:
            break
        est = measure_ratio(net)
        frac = row["budget_frac"]
        wider.append({"plan": label, "ratio": est.ratio / frac, "ratio_lo": est.ratio_lo / frac,
                      "ratio_hi": est.ratio_hi / frac, "sure": est.sure})
        log(f"[{row['model']}] budget {frac:.2f}: one step wider, {label}: ratio {wider[-1]['ratio']:.3f}")
    row["wider"] = wider
    row["cliff"] = bool(wider) and all(w["ratio"] > 1.0 for w in wider)
