"""Demo report: a markdown file and a latency chart, plus plain tables for the CLI.

Every number written comes from the ``rows`` and ``rounds`` the caller passes,
i.e. from what that run measured or computed. Files are written atomically (a
temporary file in the same folder, then ``os.replace``), so a killed run never
leaves a half-written report behind.

``rows`` maps a model label (``"baseline"``, ``"pruned"``) to a dict with the
keys of :data:`ROW_FIELDS`; a missing value is shown as ``-``. ``rounds`` are
the closed-loop rounds, as :class:`hwprune.loop.controller.Round` objects or dicts with
``target_ms``, ``predicted_ms`` and ``measured_ms``.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from profilers.atomic import atomic_write_bytes, atomic_write_text

ROW_FIELDS = (("measured_ms", "measured ms"), ("predicted_ms", "predicted ms"), ("params", "params"),
              ("flops", "FLOPs"), ("accuracy", "test accuracy"))
ROUND_HEADERS = ("round", "target ms", "predicted ms", "measured ms", "measured / budget")


# ---------------------------------------------------------------- tables

def _is_number(cell: str) -> bool:
    s = cell.strip().replace(",", "").rstrip("%xkMG")
    try:
        float(s)
    except ValueError:
        return False
    return True


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table: columns padded to a common width, numbers right-aligned."""
    head = [str(h) for h in headers]
    body = [[str(c) for c in r] for r in rows]
    for r in body:
        if len(r) != len(head):
            raise ValueError(f"row {r} has {len(r)} cells, the header has {len(head)}")
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(head)]
    numeric = [bool(body) and all(_is_number(r[i]) or r[i] == "-" for r in body) for i in range(len(head))]

    def line(cells):
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule] + [line(r) for r in body])


def _md_cell(cell: object) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numeric columns are right-aligned."""
    head = [_md_cell(h) for h in headers]
    body = [[_md_cell(c) for c in r] for r in rows]
    for r in body:
        if len(r) != len(head):
            raise ValueError(f"row {r} has {len(r)} cells, the header has {len(head)}")
    numeric = [bool(body) and all(_is_number(r[i]) or r[i] == "-" for r in body) for i in range(len(head))]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- formatting

def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("_ms"):
        return f"{float(value):.3f}"
    if key == "accuracy":
        return f"{100.0 * float(value):.2f}%"
    if key == "flops":
        return f"{float(value) / 1e6:.2f}M"
    if key == "params":
        return f"{int(value):,}"
    return str(value)


def _round_values(r) -> tuple[float, float, float]:
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    return float(get("target_ms")), float(get("predicted_ms")), float(get("measured_ms"))


def comparison_rows(rows: dict) -> list[list[str]]:
    """Rows of the baseline-vs-pruned table (model label first)."""
    return [[label] + [_fmt(k, vals.get(k)) for k, _ in ROW_FIELDS] for label, vals in rows.items()]


def comparison_headers() -> list[str]:
    return ["model"] + [h for _, h in ROW_FIELDS]


def round_rows(rounds, budget_ms: float | None = None) -> list[list[str]]:
    out = []
    for i, r in enumerate(rounds, 1):
        target, pred, meas = _round_values(r)
        ratio = f"{meas / budget_ms:.3f}" if budget_ms else "-"
        out.append([str(i), f"{target:.3f}", f"{pred:.3f}", f"{meas:.3f}", ratio])
    return out


# ---------------------------------------------------------------- the report

def _chart_png(rows: dict, rounds, budget_ms: float | None, device: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax_bar, ax_rounds = fig.subplots(1, 2)
    labels = [k for k, v in rows.items() if v.get("measured_ms") is not None]
    values = [float(rows[k]["measured_ms"]) for k in labels]
    bars = ax_bar.bar(labels, values, color=["#8c8c8c", "#2f6db5", "#4b9e5f", "#c0504d"][:len(labels)])
    for bar, v in zip(bars, values):
        ax_bar.annotate(f"{v:.3f} ms", (bar.get_x() + bar.get_width() / 2, v), xytext=(0, -4),
                        textcoords="offset points", ha="center", va="top", fontsize=8, color="white")
    if budget_ms:
        ax_bar.axhline(budget_ms, color="#c0504d", linestyle="--", linewidth=1.2,
                       label=f"budget {budget_ms:.3f} ms")
        ax_bar.legend(loc="upper right", fontsize=8)
    ax_bar.set_ylabel("measured latency (ms)")
    ax_bar.set_title(f"latency on {device}", fontsize=10)
    vals = [_round_values(r) for r in rounds]
    if vals:
        xs = list(range(1, len(vals) + 1))
        ax_rounds.plot(xs, [v[1] for v in vals], "o", color="#2f6db5", label="predicted")
        ax_rounds.plot(xs, [v[2] for v in vals], "s", color="#4b9e5f", label="measured")
        ax_rounds.plot(xs, [v[0] for v in vals], "_", color="#555555", markersize=14, label="target")
        ax_rounds.set_xticks(xs)
    else:
        ax_rounds.text(0.5, 0.5, "no closed-loop rounds", ha="center", va="center",
                       transform=ax_rounds.transAxes)
    if budget_ms:
        ax_rounds.axhline(budget_ms, color="#c0504d", linestyle="--", linewidth=1.2, label="budget")
    ax_rounds.set_xlabel("closed-loop round")
    ax_rounds.set_ylabel("latency (ms)")
    ax_rounds.set_title("predicted vs measured per round", fontsize=10)
    ax_rounds.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_markdown(rows: dict, rounds, device: str, machine: str, budget_ms: float | None = None,
                    png_name: str | None = "latency.png", notes=()) -> str:
    lines = ["# hwprune demo report", "", f"- device: `{device}`", f"- machine: {machine}"]
    if budget_ms:
        lines.append(f"- latency budget: {budget_ms:.3f} ms")
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Baseline vs pruned", "", markdown_table(comparison_headers(), comparison_rows(rows)), "",
              "## Closed-loop rounds", ""]
    if rounds:
        lines.append(markdown_table(ROUND_HEADERS, round_rows(rounds, budget_ms)))
    else:
        lines.append("No rounds: the model was returned unchanged.")
    if png_name:
        lines += ["", f"![latency]({png_name})"]
    return "\n".join(lines) + "\n"


def write_demo_report(out_dir: Path, rows: dict, rounds, device: str, machine: str, *,
                      budget_ms: float | None = None, notes=()) -> tuple[Path, Path]:
    """Write ``report.md`` and ``latency.png`` into ``out_dir``; return their paths.
    ``notes``: lines listed under the header (how the budget was chosen, warnings)."""
    out_dir = Path(out_dir)
    rounds = list(rounds)
    png = atomic_write_bytes(out_dir / "latency.png", _chart_png(rows, rounds, budget_ms, device))
    md = atomic_write_text(out_dir / "report.md", render_markdown(rows, rounds, device, machine, budget_ms,
                                                                  png.name, notes))
    return md, png
