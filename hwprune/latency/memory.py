"""Peak activation memory of a torch model: shapes traced, and a measurement.

:func:`trace_ops` runs the model once under a ``TorchDispatchMode`` and
records every aten operation in execution order (holding every tensor until
the trace ends, so that no address is reused): the shapes of the tensors it
creates (a view or an in-place op creates none: its output shares an input's
storage) and which earlier operations' tensors it reads, by storage. From
that :func:`latency_models.memory.peak_activation_bytes` computes the peak
from shapes alone. :func:`peak_activation_bytes` does both.

:func:`measure_activation_bytes` measures it: PyTorch's CPU allocator, as
recorded by ``torch.profiler`` (``profile_memory=True``), gives every
allocation and free of one forward pass with its address; an allocation freed
before the top-level operation that made it returns is scratch space (the
im2col columns of a convolution) and is left out, the others are activations,
and the peak of their running sum is the measured peak activation memory.
By default the model runs as its ``torch.fx`` graph, whose generated code
drops every value after its last use (as a graph runtime's memory planner
does, and as the computed peak assumes); ``graph=False`` runs the module
eagerly, where a tensor lives until its last Python reference goes (a
residual block's input until the block returns), so eager peaks are higher
(1.2-1.7x on the zoo models).
"""
from __future__ import annotations

import torch
import torch.fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from latency_models.memory import OpShape
from latency_models.memory import peak_activation_bytes as _peak
from profilers.inputs import as_inputs

_SKIP = {"aten.detach.default", "aten.lift_fresh.default"}


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[dict] = []
        self.producer: dict[int, int] = {}   # storage -> index of the op that created it
        self.keep: list[torch.Tensor] = []    # held, so that no address is reused during the trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) in _SKIP:
            return out
        ins = _tensors((args, kwargs))
        in_storages = {_storage(t) for t in ins}
        idx = len(self.ops)
        reads = sorted({self.producer[s] for s in in_storages if s in self.producer})
        new, dtype_bytes = [], 4
        for t in _tensors(out):
            s = _storage(t)
            if s in self.producer:      # a view or an in-place result: no new memory
                reads.append(self.producer[s])
                continue
            if s in in_storages:        # a view of the network's input
                continue
            self.producer[s] = idx
            self.keep.append(t)
            new.append(tuple(t.shape))
            dtype_bytes = t.element_size()
        self.ops.append({"name": str(func), "outputs": tuple(new), "reads": tuple(sorted(set(reads))),
                         "dtype_bytes": dtype_bytes})
        return out


def trace_ops(model: torch.nn.Module, example_inputs) -> list[OpShape]:
    """The aten operations of one forward pass (no autograd), with shapes."""
    example_inputs = as_inputs(example_inputs)
    rec = _Recorder()
    with torch.inference_mode(), rec:
        out = model(*example_inputs)
    outputs = {_storage(t) for t in _tensors(out)}
    final = {rec.producer[s] for s in outputs if s in rec.producer}
    return [OpShape(o["name"], o["outputs"], tuple(o["reads"]), o["dtype_bytes"], i in final)
            for i, o in enumerate(rec.ops)]


def peak_activation_bytes(model: torch.nn.Module, example_inputs) -> int:
    """Peak activation memory (bytes) computed from the traced shapes."""
    return _peak(trace_ops(model, example_inputs))


def measure_activation_bytes(model: torch.nn.Module, example_inputs, graph: bool = True,
                             warmup: int = 2) -> int:
    """Measured peak activation memory (bytes) of one forward pass on the CPU
    (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile
    example_inputs = as_inputs(example_inputs)
    if graph:
        model = torch.fx.symbolic_trace(model)
    with torch.inference_mode():
        for _ in range(warmup):
            model(*example_inputs)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(*example_inputs)
    events = []   # (time, ptr, bytes, end of the top-level op it happened in)

    def walk(node, top_end):
        f = node.extra_fields
        if type(f).__name__ == "_ExtraFields_Allocation":
            if f.device.type == "cpu":
                events.append((node.start_time_ns, f.ptr, f.alloc_size, top_end))
        for child in node.children:
            walk(child, top_end)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, root.end_time_ns if type(root.extra_fields).__name__ != "_ExtraFields_Allocation" else None)
    events.sort(key=lambda e: e[0])
    scratch: set[int] = set()   # event indices of scratch allocations and their frees
    open_alloc: dict[int, int] = {}
    for k, (t, ptr, size, _) in enumerate(events):
        if size > 0:
            open_alloc[ptr] = k
        elif ptr in open_alloc:
            a = open_alloc.pop(ptr)
            top_end = events[a][3]
            if top_end is not None and t <= top_end:
                scratch.update((a, k))
    cur = peak = 0
    for k, (_, _, size, _) in enumerate(events):
        if k not in scratch:
            cur += size
            peak = max(peak, cur)
    return int(peak)
