"""Plot the channel-step sweeps of every measured device side by side.

Reads the sweeps stored by ``bench_profile.py`` (CPU devices) and
``bench_gpu.py`` (GPU devices) from ``--results`` and writes ``steps.png``:
latency of a 3x3 conv 64 -> N channels on 56x56 inputs against N, each curve
divided by its latency at N = 64 so that devices of very different speed
share one axis. Flat runs are blocks of the device's step; saw teeth are an
alignment (widths off a multiple run slower).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_common as common


def sweeps(results: Path) -> list[tuple[str, list[int], list[float]]]:
    out = []
    cpu = results / "bench_profile.json"
    if cpu.exists():
        for s in json.loads(cpu.read_text()).get("steps", []):
            if s.get("widths"):
                out.append((f"{s['device']} (CPU, batch 1)", s["widths"], s["medians_ms"]))
    gpu = results / "bench_gpu.json"
    if gpu.exists():
        data = json.loads(gpu.read_text())
        name = data.get("env", {}).get("gpu", "GPU")
        for key, s in data.get("steps", {}).items():
            device, _, batch = key.partition(":b")
            out.append((f"{device} ({name}, batch {batch})", s["widths"], s["medians_ms"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(common.REPO_ROOT / "scripts" / "results"))
    args = p.parse_args(argv)
    results = Path(args.results)
    curves = sweeps(results)
    if not curves:
        print(f"error: no step sweeps in {results}; run bench_profile.py or bench_gpu.py first", file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, widths, ms in curves:
        ref = dict(zip(widths, ms)).get(64) or ms[-1]
        ax.plot(widths, [m / ref for m in ms], marker=".", linewidth=1, label=label)
    ax.set_xlabel("output channels N (3x3 conv, 64 -> N, 56x56)")
    ax.set_ylabel("latency / latency at N = 64")
    ax.set_title("Where latency changes with width, per device")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = results / ".steps.png.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(results / "steps.png")
    print(results / "steps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
