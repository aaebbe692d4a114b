"""The runtimes a board's agent serves (query ``runtime=``): ONNX Runtime (the
default) and OpenVINO measure ONNX bodies, ExecuTorch measures ``.pte``
programs lowered on the host. A runtime whose package is not installed on the
board is refused with the extra to install; nothing is imported until a
request asks for it.

Uploads are checked before any runtime sees them: ONNX as in
:func:`profilers.agent.check_onnx`; a ``.pte`` by its header
(:func:`profilers.pte.pte_problem`: size, file identifier, flatbuffer root
offset, extended header), then loaded with ExecuTorch's internal-consistency
verification. Neither format is ever unpickled. A ``.pte`` carries no input
shapes the agent could read without loading it, so the client sends them
(``input0``, ``input1``, ... in argument order).
"""
from __future__ import annotations

import importlib
import importlib.util
import math

from .pte import pte_problem

MAX_INPUT_ELEMENTS = 1 << 26   # the largest input tensor the agent generates


class Refused(Exception):
    """The request is the client's to fix (the agent answers HTTP 400)."""

# name -> (module, class, package, body format)
BOARD_RUNTIMES = {"onnxruntime": ("profilers.ort_cpu", "OrtCpuRuntime", "onnxruntime", "onnx"),
                  "openvino": ("profilers.openvino_rt", "OpenVinoCpuRuntime", "openvino", "onnx"),
                  "executorch": ("profilers.executorch_rt", "ExecuTorchRuntime", "executorch", "pte")}
DEFAULT = "onnxruntime"
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "executorch": "ExecuTorch"}


def installed(name: str) -> bool:
    return importlib.util.find_spec(BOARD_RUNTIMES[name][2]) is not None


def board_runtime(name: str, threads: int):
    """The runtime ``name`` with ``threads`` threads (:class:`BadRequest` where it cannot run here)."""
    if name not in BOARD_RUNTIMES:
        raise Refused(f"runtime must be one of {', '.join(BOARD_RUNTIMES)}, not {name!r}")
    module, cls, package, _ = BOARD_RUNTIMES[name]
    if not installed(name):
        raise Refused(f"this board has no {package}: install it there (pip install 'hwprune[{package}]') "
                         f"and restart the agent")
    return getattr(importlib.import_module(module), cls)(threads)


def fingerprints(threads: int) -> dict:
    """Per installed runtime, its fingerprint on this board (nothing heavy is imported)."""
    return {name: board_runtime(name, threads).fingerprint() for name in BOARD_RUNTIMES if installed(name)}


def pte_inputs(shapes, seed: int = 0) -> tuple:
    """Random float32 tensors of the shapes given as ``{"input0": [...], ...}``."""
    import torch
    if not isinstance(shapes, dict) or not shapes:
        raise Refused("a .pte program needs its input shapes: send {\"input0\": [N, C, H, W], ...}")
    names = [f"input{i}" for i in range(len(shapes))]
    if sorted(shapes) != sorted(names):
        raise Refused(f"the input shapes of a .pte program must be named {', '.join(names)} (argument order)")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in names:
        dims = shapes[name]
        if not (isinstance(dims, list) and all(type(d) is int and d > 0 for d in dims)):
            raise Refused(f"shape of input {name!r} must be a list of positive integers")
        if math.prod(dims) > MAX_INPUT_ELEMENTS:
            raise Refused(f"input {name!r} of shape {dims} is too large")
        out.append(torch.randn(dims, generator=gen))
    return tuple(out)


def prepare(fmt: str, data: bytes, shapes, onnx_feeds) -> tuple:
    if fmt == "pte":
        problem = pte_problem(data)
        if problem:
            raise Refused(f"the body is not an ExecuTorch program ({problem})")
        return data, pte_inputs(shapes)
    return data, onnx_feeds(data, shapes)


def measure_on_board(runtime, name: str, models, protocol, onnx_feeds) -> list:
    """Check every upload (ONNX with ``onnx_feeds(data, shapes) -> feeds``, the
    agent's checker), then measure them (interleaved when several)."""
    fmt = BOARD_RUNTIMES[name][3]
    prepared = [prepare(fmt, data, shapes, onnx_feeds) for data, shapes in models]
    one, many = (runtime.measure_pte, runtime.measure_pte_interleaved) if fmt == "pte" else \
        (runtime.measure_onnx, runtime.measure_onnx_interleaved)
    try:
        if len(prepared) == 1:
            return [one(*prepared[0], protocol)]
        return many(prepared, protocol)
    except Exception as exc:
        ours = type(exc).__module__.startswith(BOARD_RUNTIMES[name][2]) or \
            (name != DEFAULT and isinstance(exc, (RuntimeError, ValueError)))
        if ours:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise Refused(f"{LABELS[name]} on this board cannot run the model: {first}") from None
        raise


__all__ = ["BOARD_RUNTIMES", "DEFAULT", "MAX_INPUT_ELEMENTS", "Refused", "board_runtime", "fingerprints",
           "measure_on_board", "pte_inputs"]
