"""The device comparison as files: ``report.md`` (PNG plots beside it),
``report.html`` (one self-contained page, the plots embedded as base64 data
URIs) and ``compare.json`` (every number, for scripts).

Both documents are rendered from one list of blocks, so they say the same
thing; every number comes from :func:`hwprune.compare.run.run_compare`'s result.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from hwprune.export.outdir import atomic_dir
from hwprune.report import markdown_table

PREDICTED_MARK = "*"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(names):
    palette = ["#2f6db5", "#c0504d", "#4b9e5f", "#8064a2", "#f79646", "#4bacc6", "#7f7f7f"]
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


# ---------------------------------------------------------------- plots

def plot_layers(data) -> bytes:
    fig = _figure(11, 3.6)
    ax = fig.subplots()
    names = [d["name"] for d in data["devices"]]
    col = _colors(names)
    xs = range(len(data["layers"]))
    for d in data["devices"]:
        ys = [100 * r["devices"][d["name"]]["share"] for r in data["layers"]]
        ax.plot(xs, ys, "o-" if d["mode"] == "measured" else "o--", ms=3, lw=1, color=col[d["name"]],
                label=d["name"] + ("" if d["mode"] == "measured" else " (predicted)"))
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("share of the network's latency (%)")
    ax.set_title(f"{data['model']}: where the milliseconds go, per layer at full width", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_curves(data) -> bytes:
    cs = data["curves"]
    fig = _figure(4.0 * max(1, len(cs)), 3.4)
    axes = fig.subplots(1, max(1, len(cs)), squeeze=False)[0]
    col = _colors([d["name"] for d in data["devices"]])
    for ax, c in zip(axes, cs):
        for name, d in c["devices"].items():
            ax.plot(c["widths"], d["ms"], "o-" if d["source"] == "measured" else "--", ms=3, lw=1,
                    color=col[name], label=name + ("" if d["source"] == "measured" else " (predicted)"))
        ax.set_yscale("log")
        ax.set_xlabel({"out": "output channels", "in": "input channels", "dw": "channels"}[c["dim"]])
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{c['shape']} (x{c['count']})", fontsize=9)
        ax.legend(fontsize=7)
    if not cs:
        axes[0].text(0.5, 0.5, "no layer curves", ha="center", transform=axes[0].transAxes)
    return _png(fig)


def plot_widths(data) -> bytes:
    groups = data["groups"]
    names = [p["device"] for p in data["plans"]]
    col = _colors([d["name"] for d in data["devices"]])
    fig = _figure(max(8, 0.35 * len(groups) * max(1, len(names) / 2)), 3.4)
    ax = fig.subplots()
    w = 0.8 / max(1, len(names))
    for k, n in enumerate(names):
        ax.bar([i + k * w for i in range(len(groups))], [g["widths"][n] / g["size"] for g in groups], w,
               color=col[n], label=n)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(groups))])
    ax.set_xticklabels([str(g["gid"]) for g in groups], fontsize=7)
    ax.set_xlabel("channel group")
    ax.set_ylabel("kept / full width")
    ax.set_title(f"widths kept at {_pct(data['budget_frac'])} of each device's latency", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_cross(data) -> bytes:
    cr = data["cross"]
    fig = _figure(1.6 + 1.9 * len(cr["cols"]), 1.2 + 0.8 * len(cr["rows"]))
    ax = fig.subplots()
    vals = [[c["vs_own"] for c in row] for row in cr["cells"]]
    im = ax.imshow(vals, cmap="RdYlGn_r", vmin=0.8, vmax=1.2)
    for i, row in enumerate(cr["cells"]):
        for j, c in enumerate(row):
            mark = "" if c["source"] == "measured" else "\n(predicted)"
            ax.text(j, i, f"{c['ms']:.3f} ms\n{c['vs_own']:.2f}x own{mark}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cr["cols"])))
    ax.set_xticklabels(cr["cols"], fontsize=8)
    ax.set_yticks(range(len(cr["rows"])))
    ax.set_yticklabels([f"pruned for {r}" for r in cr["rows"]], fontsize=8)
    ax.set_xlabel("run on")
    fig.colorbar(im, ax=ax, label="x own plan")
    return _png(fig)


def plot_pareto(data) -> bytes:
    fig = _figure(6.5, 4.0)
    ax = fig.subplots()
    col = _colors([d["name"] for d in data["devices"]])
    full = {d["name"]: d["predicted_full_ms"] for d in data["devices"]}
    for name, pts in data["pareto"].items():
        pts = sorted(pts, key=lambda p: p["predicted_ms"])
        ax.plot([p["predicted_ms"] / full[name] for p in pts], [p["importance"] for p in pts], "o-", ms=3,
                color=col[name], label=f"{name} (predicted, full = {full[name]:.3f} ms)")
    cr = data["cross"]
    for i, p in enumerate(data["plans"]):
        own = cr["cells"][i][cr["cols"].index(p["device"])]
        x = own["ratio_to_original"] if own["source"] == "measured" else p["predicted_ms"] / full[p["device"]]
        ax.plot([x], [p["importance"]], "*", ms=12, color=col[p["device"]])
    ax.set_xlabel("whole-model latency / full network's (each device's own)")
    ax.set_ylabel("kept L1 channel importance (fraction)")
    ax.set_title("latency vs kept importance (stars: the plans, measured where run here)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


PLOTS = (("layers.png", plot_layers), ("curves.png", plot_curves), ("widths.png", plot_widths),
         ("cross.png", plot_cross), ("pareto.png", plot_pareto))


# ---------------------------------------------------------------- content

def _own_ratio(data, i: int) -> str:
    cr = data["cross"]
    c = cr["cells"][i][cr["cols"].index(cr["rows"][i])]
    return f"{c['ratio_to_original']:.3f}" + ("" if c["source"] == "measured" else PREDICTED_MARK)


def blocks(data) -> list[tuple]:
    """The report as blocks: ("h", text), ("p", text), ("ul", items),
    ("table", headers, rows), ("img", file name)."""
    devs = data["devices"]
    names = [d["name"] for d in devs]
    pred = [d["name"] for d in devs if d["mode"] != "measured"]
    out = [("h", f"Device comparison: {data['model']} at {_pct(data['budget_frac'])} of each device's latency"),
           ("ul", [f"machine: {data['machine']}", f"date: {data['date']}", f"selector: {data['selector']}",
                   "devices measured here: " + (", ".join(d["name"] for d in devs if d["mode"] == "measured")
                                                or "none"),
                   "devices predicted from their profiles (not run here): " + (", ".join(pred) or "none")])]
    out += [("h2", "Devices"), ("table", ["device", "takes part", "full network ms", "sum of layers ms",
                                          "other ms", "grid step", "channel step", "latency model"],
                                [[d["name"], d["mode"] + (f" ({d['reason']})" if d["reason"] else ""),
                                  _ms(d["baseline_ms"]) + ("" if d["mode"] == "measured" else PREDICTED_MARK),
                                  _ms(d["sum_of_layers_ms"]), _ms(d["other_ms"]), d["grid_step"],
                                  f"{d['device_step']} ({d['step_source']})" if d["device_step"] else "-",
                                  d["remainder"] + (f"; profile {d['profile']}" if d["profile"] else "")]
                                 for d in devs]),
            ("p", f"{PREDICTED_MARK} predicted, not measured. 'other': the whole network minus its conv and "
                  "linear layers measured in isolation (adds, pools, per-call overheads; negative where isolated "
                  "layers overcount).")]
    out += [("h2", "Findings"), ("ul", data["findings"] or ["(a single device: nothing to cross)"])]
    out += [("h2", "Cross matrix: the network pruned for one device, run on another"),
            ("table", ["pruned for \\ run on"] + data["cross"]["cols"],
             [[f"{r} ({_pct(data['budget_frac'])})"] + [
                 f"{c['ms']:.3f} ms, {c['vs_own']:.2f}x own" + ("" if c["source"] == "measured"
                                                                else f" {PREDICTED_MARK}")
                 + f" (pred {c['predicted_ms']:.3f})" for c in row]
              for r, row in zip(data["cross"]["rows"], data["cross"]["cells"])]),
            ("p", "Each cell: latency of the row's plan on the column's device; 'x own': relative to the plan made "
                  "for the column's device (the diagonal is 1.00x). Measured columns: each plan measured against "
                  "the original in fresh sessions, alternating blocks, to a +-2 % interval, repeated; "
                  "ms = median(plan / original) "
                  f"x the device's baseline. {PREDICTED_MARK} predicted by the device's latency model. 'pred': "
                  "the latency model's prediction."), ("img", "cross.png")]
    plans = data["plans"]
    out += [("h2", f"Plans at {_pct(data['budget_frac'])}"),
            ("table", ["device", "how", "budget ms", "predicted ms", "measured ms", "x full (cross matrix)",
                       "FLOPs", "params", "kept L1 importance", "kept active-weight importance", "note"],
             [[p["device"], p["how"], _ms(p["budget_ms"]), _ms(p["predicted_ms"]), _ms(p["measured_ms"]),
               _own_ratio(data, i), f"{p['flops'] / 1e6:.2f}M", f"{p['params']:,}", f"{p['importance']:.3f}",
               f"{p['active_importance']:.3f}", p["note"] or "-"] for i, p in enumerate(plans)]),
            ("p", "predicted / measured ms: the engine's, at the end of its closed loop; 'x full': the plan on its "
                  "own device relative to the full network, from the cross matrix (measured in alternating blocks; "
                  f"{PREDICTED_MARK} predicted)."),
            ("table", ["group", "root", "width"] + [p["device"] for p in plans],
             [[g["gid"], g["root"], g["size"]] + [g["widths"][p["device"]] for p in plans]
              for g in data["groups"]]), ("img", "widths.png")]
    layer_head = ["layer", "shape"] + [f"{n} {h}" for n in names for h in ("ms", "us/ch", "share")]
    layer_rows = [[r["name"], r["shape"]] + [
        x for n in names for x in (
            f"{r['devices'][n]['ms']:.4f}" + ("" if r["devices"][n]["source"] == "measured layer" else " (model)"),
            "-" if r["devices"][n]["us_per_channel"] is None else f"{r['devices'][n]['us_per_channel']:.2f}",
            _pct(r["devices"][n]["share"]))] for r in data["layers"]]
    layer_rows.append(["other", "network - sum of layers"] + [
        x for d in devs for x in (f"{d['other_ms']:.4f}", "-", _pct(d["other_ms"] / d["baseline_ms"]))])
    out += [("h2", "Where the milliseconds go: every layer at full width"),
            ("p", "ms: the layer alone (conv + activation) at full width, as measured ('(model)': from the "
                  "latency model, shape not measured); us/ch: that time per channel of its prunable width; "
                  "share: of the whole network's latency on that device."),
            ("table", layer_head, layer_rows), ("img", "layers.png")]
    out += [("h2", "Costliest layers: latency vs width"),
            ("table", ["shape", "layers", "width varied"] + [f"{n} step" for n in names],
             [[c["shape"], c["count"], c["dim"]] + [
                 "-" if c["devices"][n]["step"] is None else str(c["devices"][n]["step"]) for n in names]
              for c in data["curves"]]),
            ("p", "step: the block of channels within which this layer's measured time is flat (the same rule "
                  "as the device's channel step; '-' where not measured here). Measured: two sweeps, ascending "
                  "then descending, mean per width."), ("img", "curves.png")]
    out += [("h2", "Latency vs kept importance"),
            ("table", ["device", "points", "smallest predicted ms", "importance there", "full ms"],
             [[n, len(pts), _ms(min(p["predicted_ms"] for p in pts)),
               f"{min(pts, key=lambda p: p['predicted_ms'])['importance']:.3f}",
               _ms(next(d["predicted_full_ms"] for d in devs if d["name"] == n))]
              for n, pts in data["pareto"].items()]),
            ("p", f"The {data['selector']} selector at budgets from 15 % to 100 % of each device's predicted "
                  "full latency (predicted by that device's latency model); stars: the plans above."),
            ("img", "pareto.png")]
    return out


def render_markdown(bl) -> str:
    lines = []
    for b in bl:
        if b[0] == "h":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "ul":
            lines += [f"- {x}" for x in b[1]] + [""]
        elif b[0] == "table":
            lines += [markdown_table(b[1], b[2]), ""]
        elif b[0] == "img":
            lines += [f"![{b[1][:-4]}]({b[1]})", ""]
    return "\n".join(lines)


def render_html(bl, pngs: dict[str, bytes], title: str) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:2px 6px;text-align:right}td:first-child,th{text-align:left}img{max-width:100%}</style>",
             "</head><body>"]
    for b in bl:
        if b[0] in ("h", "h2"):
            tag = "h1" if b[0] == "h" else "h2"
            parts.append(f"<{tag}>{e(b[1])}</{tag}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b[0] == "img":
            data = base64.b64encode(pngs[b[1]]).decode("ascii")
            parts.append(f"<img alt='{e(b[1])}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


def write_report(folder: Path, data: dict) -> list[str]:
    """Write the report files into ``folder`` (a fresh temporary folder that
    the caller renames into place); returns their names."""
    folder = Path(folder)
    pngs = {name: fn(data) for name, fn in PLOTS}
    bl = blocks(data)
    for name, png in pngs.items():
        (folder / name).write_bytes(png)
    (folder / "report.md").write_text(render_markdown(bl), encoding="utf-8")
    (folder / "report.html").write_text(render_html(bl, pngs, bl[0][1]), encoding="utf-8")
    (folder / "compare.json").write_text(json.dumps(data, indent=1, default=float) + "\n", encoding="utf-8")
    return ["report.md", "report.html", "compare.json"] + list(pngs)


def save_report(out: Path, data: dict) -> list[str]:
    """The report files of :func:`write_report` as the folder ``out``, which
    they replace in one rename; returns their names."""
    with atomic_dir(Path(out), force=True) as tmp:
        return write_report(tmp, data)
