"""Pruning non-depthwise grouped convolutions (ResNeXt, RegNet, ResNeSt ...).

A conv with ``G`` groups reads input channel block ``j`` (``in/G`` channels)
into output block ``j`` (``out/G`` channels) only. It is pruned in one of two
modes, chosen per conv (:func:`hwprune.graph.grouped_modes.choose_modes` lets
the device decide):

``within``
    Every group keeps the same number of input and of output channels (which
    ones, per group, by importance); ``groups`` stays ``G``. The channel group
    of each side is split into one segment per conv group, and its options keep
    the same count in every segment (``ChannelGroup.uniform``).
``whole``
    Whole conv groups go: ``g`` of them are kept, with their input and output
    blocks (``g*in/G`` and ``g*out/G`` channels, ``groups`` becomes ``g``). The
    two sides' channel groups are coupled: the side with the smaller block (the
    *primary*) stays a channel group whose options are multiples of its block
    (``ChannelGroup.block``); the other side's layers follow it (their terms
    point to the primary group with the blocks' ratio as multiplicity; criteria
    see both sides' members, :func:`followers`). A conv group scores the sum of
    its channels' scores (:func:`block_scores`), so the selectors keep whole blocks.

A channel group that grouped convs would split unevenly (two of them with
different group counts), or that a grouped conv reads with other channels,
keeps its widths.

Depthwise convs are not grouped convs here: they stay depthwise. Torch-Pruning
1.6 assumes every group keeps the same local input indices, so the surgery
skips its handlers for grouped convs and slices their weights itself
(:func:`rebuild_conv`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

MODES = ("within", "whole")


@dataclass(frozen=True)
class GroupedConv:
    """One grouped conv of a space: its mode and, per side, the channel group
    it belongs to (-1: fixed) and the root index in that group of each of its
    channels. ``whole_ok``: whether whole-group mode is possible (``note`` says
    why not); for a whole-mode conv ``primary`` is the side ("in"/"out") whose
    group the selectors choose, ``root_*``/``size_*`` name both sides' groups."""
    name: str
    groups: int
    in_channels: int
    out_channels: int
    mode: str
    in_gid: int
    out_gid: int
    in_roots: tuple[int, ...]
    out_roots: tuple[int, ...]
    root_in: str = ""
    root_out: str = ""
    whole_ok: bool = False
    primary: str = ""
    note: str = ""


def is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _roots_of(dg, g, mod, role_fn, root_handler) -> tuple[int, ...] | None:
    """Root index (in group ``g``) of each of ``mod``'s channels on one side, or None."""
    root = dg.model.get_submodule(g.root)
    grp = dg.get_pruning_group(root, root_handler(root), idxs=list(range(g.size)))
    for item in grp.items:
        if item.dep.target.module is mod and role_fn(item.dep) is not None:
            idxs, roots = [int(i) for i in item.idxs], getattr(item, "root_idxs", None)
            if roots is None or len(roots) != len(idxs):
                return None
            n = len(idxs)
            out = [-1] * n
            for i, r in zip(idxs, roots):
                if i >= n:
                    return None
                out[i] = int(r)
            return tuple(out) if -1 not in out else None
    return None


def _split(size: int, convs_here) -> tuple[tuple[int, ...], ...] | None:
    """Root indices of a group by the conv group each is in, for every grouped
    conv on it; None where the parts are unequal."""
    key: dict[int, list[int]] = {}
    for _, _, roots, G in convs_here:
        b = len(roots) // G
        for c, r in enumerate(roots):
            key.setdefault(r, []).append(c // b)
    sig = [tuple(key[r]) for r in range(size)]
    seg_index = tuple(tuple(r for r in range(size) if sig[r] == s) for s in sorted(set(sig)))
    return seg_index if len({len(s) for s in seg_index}) == 1 else None


def _freeze(groups, layers, bad: set) -> tuple[tuple, tuple]:
    """``groups`` without those in ``bad``, whose channels become the layers' fixed widths."""
    sizes = {g.gid: g.segments for g in groups}

    def fixed(ts):
        return sum(t.mult * sizes[t.gid][t.seg].size for t in ts if t.gid in bad)

    new_layers = tuple(replace(l, fixed_in=l.fixed_in + fixed(l.in_terms), fixed_out=l.fixed_out + fixed(l.out_terms),
                               in_terms=tuple(t for t in l.in_terms if t.gid not in bad),
                               out_terms=tuple(t for t in l.out_terms if t.gid not in bad)) for l in layers)
    return tuple(g for g in groups if g.gid not in bad), new_layers


def regroup(dg, groups, layers, modes, role_fn, root_handler):
    """Rewrite the space's groups and layers for its grouped convs (see the
    module docstring). ``modes``: None (within everywhere), one mode, or conv
    name -> mode. Returns ``(groups, layers, grouped convs)``."""
    model = dg.model
    by_gid = {g.gid: g for g in groups}
    convs = [l for l in layers if is_grouped(model.get_submodule(l.name))]
    if not convs:
        return groups, layers, ()
    records, bad = [], set()
    touched: dict[int, list[tuple[str, str, tuple[int, ...], int]]] = {}  # gid -> (conv, side, roots, G)
    for layer in convs:
        mod = model.get_submodule(layer.name)
        sides = {}
        for side, terms, n in (("in", layer.in_terms, mod.in_channels), ("out", layer.out_terms, mod.out_channels)):
            gids = {t.gid for t in terms}
            if len(gids) != 1:
                sides[side] = (-1, tuple(range(n)), "")
                bad |= gids  # channels of several groups: not split by conv groups here, so kept
                continue
            g = by_gid[gids.pop()]
            roots = _roots_of(dg, g, mod, lambda d, s=side: d if role_fn(d) == s else None, root_handler)
            if roots is None or g.size != n or len(g.segments) != 1:
                bad.add(g.gid)
                continue
            sides[side] = (g.gid, roots, g.root)
            touched.setdefault(g.gid, []).append((layer.name, side, roots, mod.groups))
        want = modes.get(layer.name, "within") if isinstance(modes, dict) else (modes or "within")
        if want not in MODES:
            raise ValueError(f"grouped conv mode {want!r}: use one of {MODES}")
        records.append([layer.name, mod, sides, want])
    split = {gid: _split(by_gid[gid].size, convs_here) for gid, convs_here in touched.items()}
    bad |= {gid for gid, seg_index in split.items() if seg_index is None}
    if bad:  # channel groups a grouped conv couples in ways not handled here keep their widths
        return regroup(dg, *_freeze(groups, layers, bad), modes, role_fn, root_handler)
    merged: dict[int, tuple[int, int]] = {}  # secondary gid -> (primary gid, ratio)
    out_records = []
    for name, mod, sides, want in records:
        (gi, ri, root_i), (go, ro, root_o) = sides["in"], sides["out"]
        G, bin_, bout = mod.groups, mod.in_channels // mod.groups, mod.out_channels // mod.groups
        note = ""
        if gi < 0 or go < 0:
            note = "a side of it is not prunable"
        elif gi == go:
            note = "its input and output channels are one group"
        elif len(touched[gi]) > 1 or len(touched[go]) > 1:
            note = "a side of it is shared with another grouped conv"
        elif max(bin_, bout) % min(bin_, bout):
            note = "its input and output blocks are not multiples of one another"
        whole_ok = not note
        mode = "whole" if want == "whole" and whole_ok else "within"
        if want == "whole" and not whole_ok:
            note = f"whole-group mode not possible: {note}"
        primary = ""
        if mode == "whole":
            primary = "in" if bin_ <= bout else "out"
            pg, sg = (gi, go) if primary == "in" else (go, gi)
            merged[sg] = (pg, max(bin_, bout) // min(bin_, bout))
        out_records.append(GroupedConv(name, G, mod.in_channels, mod.out_channels, mode, gi, go, ri, ro,
                                       root_i, root_o, whole_ok, primary, note))
    whole = {r.in_gid if r.primary == "in" else r.out_gid: r for r in out_records if r.mode == "whole"}
    # new groups: within-mode sides split into conv-group segments, whole-mode primaries in blocks
    new_groups, nseg = [], {}
    for g in groups:
        if g.gid in merged:
            continue
        if g.gid in whole:
            r = whole[g.gid]
            roots = r.in_roots if r.primary == "in" else r.out_roots
            sec = [s for s, (p, _) in merged.items() if p == g.gid]
            merged_layers = tuple(sorted(set(g.segments[0].layers).union(*(by_gid[s].segments[0].layers for s in sec))))
            block = len(roots) // r.groups
            new_groups.append(replace(g, segments=(replace(g.segments[0], size=g.size, layers=merged_layers),),
                                      seg_index=(tuple(roots),), block=block))
            nseg[g.gid] = 1
            continue
        if g.gid not in split:
            new_groups.append(g)
            continue
        seg_index = split[g.gid]
        segs = tuple(replace(g.segments[0], size=len(s)) for s in seg_index)
        new_groups.append(replace(g, segments=segs, seg_index=seg_index, uniform=True))
        nseg[g.gid] = len(segs)
    renum = {g.gid: i for i, g in enumerate(new_groups)}
    for s, (p, _) in merged.items():
        renum[s] = renum[p]
    new_groups = [replace(g, gid=renum[g.gid]) for g in new_groups]

    def terms(ts):
        out = []
        for t in ts:
            if t.gid in merged:
                p, ratio = merged[t.gid]
                out.append(replace(t, gid=renum[p], seg=0, mult=t.mult * ratio))
            elif nseg.get(t.gid, 1) > 1:
                out.extend(replace(t, gid=renum[t.gid], seg=s) for s in range(nseg[t.gid]))
            else:
                out.append(replace(t, gid=renum[t.gid]))
        return tuple(out)

    whole_names = {r.name: r for r in out_records if r.mode == "whole"}
    new_layers = []
    for layer in layers:
        gin = whole_names[layer.name].in_channels // whole_names[layer.name].groups if layer.name in whole_names else 0
        new_layers.append(replace(layer, in_terms=terms(layer.in_terms), out_terms=terms(layer.out_terms),
                                  group_in=gin))
    recs = tuple(replace(r, in_gid=renum.get(r.in_gid, -1), out_gid=renum.get(r.out_gid, -1))
                 for r in out_records)
    return tuple(new_groups), tuple(new_layers), recs


def options(g, step: int, min_width: int, align: int, width_grid) -> list[tuple[int, ...]]:
    """Width options of a group split by grouped convs: the same count in every
    segment (``uniform``), or multiples of its conv-group ``block``."""
    if g.block > 1:
        n = g.size // g.block
        return [(k * g.block,) for k in width_grid(n, max(1, step // g.block), max(1, min_width // g.block))]
    n, size = len(g.segments), g.segments[0].size
    return [(k,) * n for k in width_grid(size, max(1, step // n), max(1, min_width // n), align // n if align else 0)]


def block_scores(space, scores: dict) -> dict:
    """Scores with every whole-mode conv group's channels scoring the group's
    mean (the group as a unit scores the sum of its channels), plus a tiny
    per-group tie-breaker, so keeping the top channels keeps whole groups."""
    out = dict(scores)
    for g in space.groups:
        if g.block <= 1:
            continue
        s = [float(v) for v in scores[g.gid]]
        order = list(g.seg_index[0])
        blocks = [order[i:i + g.block] for i in range(0, g.size, g.block)]
        sums = [sum(s[i] for i in b) for b in blocks]
        tie = 1e-9 * (max(abs(v) for v in sums) or 1.0)
        new = list(s)
        for j, b in enumerate(blocks):
            for i in b:
                new[i] = sums[j] / g.block + tie * (len(blocks) - j)
        out[g.gid] = np.asarray(new, dtype=float)
    return out


def followers(space, gid: int) -> list[tuple[str, int, dict[int, int]]]:
    """For a group that loses whole conv groups: the side of each such conv
    that follows it, as (its channel group's root layer, size, its root index
    -> the group's root index of the channel in the same place of the block)."""
    out = []
    for r in space.grouped:
        if r.mode != "whole" or r.in_gid != gid:
            continue
        p, s = (r.in_roots, r.out_roots) if r.primary == "in" else (r.out_roots, r.in_roots)
        bp, bs = len(p) // r.groups, len(s) // r.groups
        to_root = {s[c]: p[(c // bs) * bp + (c % bs) * bp // bs] for c in range(len(s))}
        out.append((r.root_out if r.primary == "in" else r.root_in, len(s), to_root))
    return out


# ---- surgery ------------------------------------------------------------------

def conv_kept(space, kept: dict[int, list[int]]) -> tuple[dict[str, tuple[list[int], list[int]]],
                                                          list[tuple[str, list[int]]]]:
    """Per grouped conv, its kept (input, output) channels; and for whole-mode
    convs the (root layer, dropped root indices) of the side that follows the
    primary group."""
    convs, follow = {}, []
    for r in space.grouped:
        keep = {}
        for side, gid, roots in (("in", r.in_gid, r.in_roots), ("out", r.out_gid, r.out_roots)):
            ks = set(int(i) for i in kept.get(gid, range(len(roots)))) if gid >= 0 else None
            keep[side] = [c for c, root in enumerate(roots) if ks is None or root in ks]
        if r.mode == "whole":
            n_p = r.in_channels if r.primary == "in" else r.out_channels
            b_p = n_p // r.groups
            blocks = sorted({c // b_p for c in keep[r.primary]})
            if len(blocks) * b_p != len(keep[r.primary]):
                raise ValueError(f"grouped conv {r.name}: the kept channels are not whole conv groups")
            bin_, bout = r.in_channels // r.groups, r.out_channels // r.groups
            keep["in"] = [c for c in range(r.in_channels) if c // bin_ in blocks]
            keep["out"] = [c for c in range(r.out_channels) if c // bout in blocks]
            sec = "out" if r.primary == "in" else "in"
            roots, sk = (r.out_roots, keep["out"]) if sec == "out" else (r.in_roots, keep["in"])
            drop = sorted(set(roots) - {roots[c] for c in sk})
            if drop:
                follow.append((r.root_out if sec == "out" else r.root_in, drop))
        convs[r.name] = (keep["in"], keep["out"])
    return convs, follow


def prune_skipping(group, skip: set) -> None:
    """Prune a Torch-Pruning group except its items on the modules in ``skip``."""
    items = [it for it in group.items if it.dep.target.module not in skip]
    if len(items) == len(group.items):
        group.prune()
    elif items:  # its first item (what the pruning history records) may be gone
        group.items[:] = items
        group.prune(record_history=False)


def rebuild_conv(conv: nn.Conv2d, original: nn.Conv2d, keep_in: list[int], keep_out: list[int]) -> None:
    """Set ``conv`` to ``original`` keeping input channels ``keep_in`` and output
    channels ``keep_out``: every kept conv group keeps the same counts; its
    filters read their own group's kept inputs."""
    G = original.groups
    bin_, bout = original.in_channels // G, original.out_channels // G
    outs_by = {}
    for o in keep_out:
        outs_by.setdefault(o // bout, []).append(o)
    ins_by = {}
    for c in keep_in:
        ins_by.setdefault(c // bin_, []).append(c - (c // bin_) * bin_)
    if sorted(outs_by) != sorted(ins_by) or len({len(v) for v in outs_by.values()}) > 1 \
            or len({len(v) for v in ins_by.values()}) > 1:
        raise ValueError(f"grouped conv: kept channels are not the same count in every kept group "
                         f"(inputs {[len(v) for v in ins_by.values()]}, outputs {[len(v) for v in outs_by.values()]})")
    w = original.weight.detach()
    rows = [w[o, ins_by[o // bout]] for o in sorted(keep_out)]
    with torch.no_grad():
        conv.weight = nn.Parameter(torch.stack(rows).clone(), requires_grad=original.weight.requires_grad)
        if original.bias is not None:
            conv.bias = nn.Parameter(original.bias.detach()[sorted(keep_out)].clone(),
                                     requires_grad=original.bias.requires_grad)
    conv.in_channels, conv.out_channels, conv.groups = len(keep_in), len(keep_out), len(outs_by)



def dense_weight(conv: nn.Conv2d) -> torch.Tensor:
    """A grouped conv's weight as a dense ``[out, in, kh, kw]`` (zero outside its groups)."""
    w, G = conv.weight.detach(), conv.groups
    bin_, bout = conv.in_channels // G, conv.out_channels // G
    dense = w.new_zeros((conv.out_channels, conv.in_channels, *w.shape[2:]))
    for j in range(G):
        dense[j * bout:(j + 1) * bout, j * bin_:(j + 1) * bin_] = w[j * bout:(j + 1) * bout]
    return dense
