"""Layout reorders: what an isolated layer pays that a network does not.

ONNX Runtime's CPU kernels run a conv blocked (NCHWc) when its widths are on
the alignment (:func:`latency_models.quadratic.misaligned`); a tensor is
reordered wherever its producer's layout differs from the layout a reader
reads. These rules, read from the runtime's optimised graphs, say how many
elements of reorders a layer saves (or pays) inside a network against its
isolated measurement; :class:`latency_models.network.NetworkLatencyModel`
prices them.
"""
from __future__ import annotations

import numpy as np

from profilers import LayerSpec

from .quadratic import misaligned, reads_plain_input


def whole_block(align: int, block: int | None) -> int:
    """The channels a concat, a pool or a grouped conv's group must come in to
    stay blocked: the runtime's block, or the alignment where none is known."""
    return int(block) if block and block > 1 else int(align)


def reader_wants_blocked(reader: str, n, align: int, block: int | None) -> np.ndarray:
    """Whether a reader of kind ``reader`` (:data:`profilers.specs.READERS`) of a
    tensor of ``n`` channels reads it in the blocked layout (ONNX Runtime's
    rules, read from its optimised graphs): a conv, depthwise or grouped, as
    :func:`latency_models.quadratic.misaligned` and
    :func:`latency_models.quadratic.reads_plain_input` say for one reading
    ``n`` channels (and writing ``n``); a concat or a pool on whole blocks;
    anything else plain."""
    n = np.asarray(n, dtype=np.int64)
    if reader in ("concat", "pool"):
        return n % whole_block(align, block) == 0
    if reader == "conv":
        conv = LayerSpec("conv", 1, 1)
    elif reader == "dw":
        conv = LayerSpec("conv", 2, 2, groups=2)
    elif reader.startswith("grouped:"):
        g = int(reader.split(":", 1)[1])
        conv = LayerSpec("conv", 2 * g, 2 * g, groups=g)
    else:
        return np.zeros(n.shape, dtype=bool)
    return ~misaligned(conv, n, align, block, n) & ~reads_plain_input(conv, n, block)


def own_kind_readers(spec: LayerSpec) -> tuple[str, ...]:
    """The readers a layer is taken to have where its graph is unknown: of its
    own kind, a depthwise conv's a pointwise conv (as in inverted residuals)."""
    return (f"grouped:{spec.groups}",) if spec.groups > 1 and not spec.depthwise else ("conv",)


def reorder_saved_elements(spec: LayerSpec, n_in, n_out, align: int | None, block: int | None = None) -> np.ndarray:
    """Elements of layout reorders a layer does not pay inside a network, over
    arrays of widths (negative where it pays one the isolated layer did not).

    A runtime with a blocked layout (ONNX Runtime's NCHWc, when the input width
    is on the alignment, or below one ``block`` for a conv that is not grouped:
    :func:`latency_models.quadratic.misaligned`) measures an isolated layer
    with a reorder of its input (unless it reads a narrow input as it is:
    :func:`latency_models.quadratic.reads_plain_input`) and of its output;
    inside a network a chain of blocked layers pays none of them, and a tensor
    pays one where its producer's layout differs from the layout a reader of it
    reads (:func:`reader_wants_blocked`), charged to the producer (a residual
    add's sum to one of its inputs; the others read it as ``add``). The readers
    are the spec's (``spec.readers``, from the network's graph), else
    :func:`own_kind_readers`. A layer reading a concat (``spec.concat_input``)
    that is not on whole blocks pays the reorder of its input: the concat runs
    plain. Measured on ONNX Runtime with AVX-512, a reorder costs about
    0.1-0.2 ns per element, as much as a depthwise conv's whole work at some
    widths."""
    n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
    if not align or align <= 1 or spec.kind != "conv":
        return np.zeros(n_in.shape)
    oh, ow = spec.out_hw
    in_el = spec.batch * spec.height * spec.width * n_in.astype(float)
    out_el = spec.batch * oh * ow * n_out.astype(float)
    blocked = ~misaligned(spec, n_in, align, block, n_out)
    reorders_input = (n_in > align) & ~reads_plain_input(spec, n_in, block)
    isolated = np.where(blocked, np.where(reorders_input, in_el, 0.0) + out_el, 0.0)
    wants = [reader_wants_blocked(r, n_out, align, block) for r in spec.readers or own_kind_readers(spec)
             if r != "add"]
    no = np.zeros(n_out.shape, dtype=bool)
    pays = np.where(blocked, np.logical_or.reduce([~w for w in wants]) if wants else no,
                    np.logical_or.reduce(wants) if wants else no)
    plain_concat = blocked & reorders_input & (n_in % whole_block(align, block) != 0) & spec.concat_input
    return isolated - np.where(pays, out_el, 0.0) - np.where(plain_concat, in_el, 0.0)


__all__ = ["own_kind_readers", "reader_wants_blocked", "reorder_saved_elements", "whole_block"]
