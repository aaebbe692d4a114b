"""Load a model named on the command line, and save a pruned one.

``--model`` takes a zoo name, ``torchvision:NAME`` or ``timm:NAME``
(:mod:`hwprune.sources`, random weights), or a file:

* a hwprune checkpoint (``prune --out`` writes ``model.pt``): the model's
  source (a zoo name, ``torchvision:NAME`` or ``timm:NAME``), plan and pruned
  state dict; rebuilt from its source without pickles;
* ``{"zoo": name, "state_dict": ...}`` (weights for a zoo model; ``"source"``
  in place of ``"zoo"`` for any named model);
* a ``torch.export`` program (``.pt2``) or a TorchScript file;
* a pickled whole ``nn.Module`` only with ``trust_pickle=True``.

Everything else is read with ``torch.load(weights_only=True)``.

A plan (``plan.json``: kept channels per group, the residual blocks it
removes by module path (``removed_blocks``, only when it removes some) and a
fingerprint of the original architecture, :func:`plan_fingerprint`) re-applies a pruning to the
original model with :func:`apply_plan`; the pruned weights then load with
``load_state_dict``. A plan records the example inputs' shapes and dtypes,
so that it re-applies without example inputs, and how its grouped convs were
pruned (``grouped_modes``: within their groups or by whole groups).
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune import sources, zoo
from hwprune.errors import UserError

CHECKPOINT_FORMAT = "hwprune-model/1"


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    example_input: torch.Tensor
    source: str
    zoo_name: str | None = None
    num_classes: int | None = None
    plan: dict | None = None          # the plan a hwprune checkpoint was pruned with
    model_source: str | None = None   # what rebuilds it: a zoo name, torchvision:NAME or timm:NAME


def _named(name: str, num_classes: int | None = None, input_shape=None) -> LoadedModel:
    """A zoo model or a ``torchvision:NAME`` / ``timm:NAME`` model, random weights."""
    if sources.is_source(name):
        model, x, classes = sources.create(name, num_classes, input_shape)
        return LoadedModel(model, x, name, None, classes, model_source=name)
    try:
        e = zoo.entry(name)
    except KeyError:
        raise UserError(f"unknown model {name!r}; zoo models: {', '.join(zoo.list_models())}, "
                        f"torchvision:NAME, timm:NAME, or give a model file") from None
    model, x = zoo.create(name, num_classes)
    if input_shape:
        x = torch.randn(*input_shape)
    return LoadedModel(model, x, name, name, num_classes or e.num_classes, model_source=name)


def _shape_input(input_shape, fallback=None) -> torch.Tensor:
    if input_shape:
        return torch.randn(*input_shape)
    if fallback is not None:
        return fallback
    raise UserError("this model file does not record its input size; pass --input-shape N,C,H,W")


def plan_fingerprint(space) -> str:
    """``sha256:...`` of the unpruned architecture a plan is made for: every
    conv/linear layer's (name, type, in, out, kernel, stride, groups), sorted,
    and the channel groups' (root, size). Weights and input size do not enter."""
    layers = []
    for layer in space.layers:
        s = layer.spec
        layers.append([layer.name, type(space.model.get_submodule(layer.name)).__name__, s.in_channels,
                       s.out_channels, list(s.kernel), list(s.stride), s.groups])
    groups = sorted([g.root, g.size] for g in space.groups)
    blob = json.dumps({"layers": sorted(layers), "groups": groups}, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_plan(plan) -> dict:
    if isinstance(plan, (str, Path)):
        try:
            plan = json.loads(Path(plan).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"cannot read plan {plan}: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("groups"), list):
        raise UserError("not a hwprune plan (expected a dict with a 'groups' list, as in plan.json)")
    return plan


def plan_input_shapes(example_inputs) -> dict:
    """What a plan records of the example inputs: ``input_shapes`` and ``input_dtypes``."""
    from profilers.inputs import as_inputs
    inputs = as_inputs(example_inputs)
    return {"input_shapes": [[int(d) for d in t.shape] for t in inputs],
            "input_dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs]}


def plan_inputs(plan: dict, seed: int = 0) -> tuple[torch.Tensor, ...] | None:
    """Example inputs of the shapes and dtypes ``plan`` records (random floats,
    zero integers); None for a plan that records none."""
    shapes = plan.get("input_shapes")
    if not shapes:
        return None
    dtypes = plan.get("input_dtypes") or ["float32"] * len(shapes)
    gen = torch.Generator().manual_seed(seed)
    out = []
    try:
        for shape, name in zip(shapes, dtypes):
            dtype = getattr(torch, str(name))
            if not isinstance(dtype, torch.dtype):
                raise TypeError(name)
            shape = [int(d) for d in shape]
            out.append(torch.randn(shape, generator=gen, dtype=dtype) if dtype.is_floating_point
                       else torch.zeros(shape, dtype=dtype))
    except (AttributeError, TypeError, ValueError, RuntimeError):
        raise UserError(f"the plan's input_shapes/input_dtypes ({shapes!r:.60}, {dtypes!r:.40}) are malformed; "
                        f"pass example_inputs") from None
    return tuple(out)


def apply_plan(model: nn.Module, plan, example_inputs=None) -> nn.Module:
    """Rebuild the pruned architecture from the original model and a plan (a
    dict or a ``plan.json`` path); load the pruned weights into the result with
    ``load_state_dict``. Without ``example_inputs``, inputs of the shapes the
    plan records are used. A plan made for another architecture is refused (by
    its fingerprint; older plans without one, by their channel groups)."""
    from hwprune.graph.space import PruningSpace
    from hwprune.graph.surgery import apply_kept
    plan = _read_plan(plan)
    if example_inputs is None:
        example_inputs = plan_inputs(plan)
        if example_inputs is None:
            raise UserError("this plan does not record its input shapes (made by an older hwprune); pass "
                            "example_inputs: apply_plan(model, plan, example_inputs)")
    modes = plan.get("grouped_modes")
    if modes is not None and not (isinstance(modes, dict) and all(v in ("within", "whole") for v in modes.values())):
        raise UserError("plan's grouped_modes must map grouped conv names to 'within' or 'whole'")
    space = PruningSpace(model, example_inputs, grouped_modes=modes)
    want = plan.get("fingerprint")
    if want is not None:
        have = plan_fingerprint(space)
        if want != have:
            raise UserError(f"the plan does not fit this model: it was made for another architecture "
                            f"(plan fingerprint {str(want)[:19]}, this model {have[:19]}); apply it to "
                            f"the model it was made for")
    removed = plan_removed_blocks(space, plan)
    groups = {(g.gid, g.root, g.size): g for g in space.groups}
    kept = {}
    for pg in plan["groups"]:
        try:
            key = (pg["gid"], pg["root"], pg["size"])
            idx = [int(i) for i in pg["kept"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"plan group {pg!r:.80} is malformed (needs gid, root, size, kept)") from None
        if key not in groups:
            raise UserError(f"the plan does not fit this model (group {pg['root']} of size {pg['size']} "
                            f"not found); use the model the plan was made for")
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= pg["size"]:
            raise UserError(f"plan group {pg['root']}: kept channels must be distinct indices in "
                            f"0..{pg['size'] - 1}, at least one")
        kept[pg["gid"]] = idx
    return apply_kept(space, kept, removed)


def plan_removed_blocks(space, plan: dict) -> list[str]:
    """The module paths of the blocks ``plan`` removes (``removed_blocks``),
    each checked to be a removable block of ``space``'s model."""
    paths = plan.get("removed_blocks") or []
    if not paths:
        return []
    from hwprune.graph.blocks import find_blocks
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UserError("plan removed_blocks is malformed (expected a list of module paths)")
    found = {b.path for b in find_blocks(space)}
    bad = [p for p in paths if p not in found]
    if bad:
        raise UserError(f"the plan removes {bad[0]}, which is not a removable residual block of this model; "
                        f"use the model the plan was made for")
    return list(paths)


def load_model(spec: str, input_shape=None, trust_pickle: bool = False) -> LoadedModel:
    """The model ``spec`` names (a zoo name, ``torchvision:NAME``, ``timm:NAME``)
    or holds (a file; see the module docstring), with an example input of
    ``input_shape`` (default: the model's own, or the one its plan records)."""
    path = Path(spec)
    if sources.is_source(spec) and not path.exists():
        return _named(spec, None, input_shape)
    if not path.exists():
        if "/" in spec or "." in spec:
            raise UserError(f"model file {spec} does not exist; give a zoo name "
                            f"({', '.join(zoo.list_models())}), torchvision:NAME, timm:NAME or a model file")
        return _named(spec, None, input_shape)
    if path.is_dir():
        if (path / "model.pt").is_file():
            return load_model(str(path / "model.pt"), input_shape, trust_pickle)
        raise UserError(f"{path} is a folder without model.pt; give the model file")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names):
            try:
                prog = torch.export.load(str(path))
                model = prog.module()
                args = getattr(prog, "example_inputs", None)
                fallback = args[0][0] if args and args[0] else None
                return LoadedModel(model, _shape_input(input_shape, fallback), str(path))
            except Exception as exc:
                raise UserError(f"cannot read torch.export file {path}: {exc}") from None
        if any(n.endswith("constants.pkl") for n in names):
            try:
                return LoadedModel(torch.jit.load(str(path)).eval(), _shape_input(input_shape), str(path))
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"cannot read TorchScript file {path}: {exc}") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (a pickled whole model needs --trust-pickle, only for files you trust)" \
            if not trust_pickle and "weights_only" in str(exc) else ""
        raise UserError(f"cannot read model file {path}: {msg[:200]}{hint}") from None
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), _shape_input(input_shape), str(path))
    if isinstance(obj, dict) and ("source" in obj or "zoo" in obj) and "state_dict" in obj:
        return _from_checkpoint(obj, path, input_shape)
    raise UserError(f"{path} is not a model file hwprune reads (expected a hwprune checkpoint, "
                    f"a {{'zoo', 'state_dict'}} dict, a torch.export or TorchScript file)")


def _from_checkpoint(obj: dict, path: Path, input_shape=None) -> LoadedModel:
    """Rebuild a checkpoint's model from its source, apply its plan, load its weights."""
    name = obj.get("source") or obj.get("zoo")
    if not name:
        raise UserError(f"{path} does not record which model it holds (it was saved from a model file); "
                        f"load that model and its state_dict yourself, or prune a named model")
    plan = obj.get("plan") or None
    recorded = plan_inputs(plan) if isinstance(plan, dict) else None
    if not input_shape and recorded is not None and len(recorded) == 1:
        input_shape = tuple(recorded[0].shape)
    base = _named(str(name), obj.get("num_classes"), input_shape)
    model, x = base.model, base.example_input
    if plan:
        model = apply_plan(model, plan, (x,))
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"weights in {path} do not fit model {name!r}: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    return LoadedModel(model.eval(), x, str(path), base.zoo_name, base.num_classes, plan,
                       model_source=base.model_source)


def checkpoint(model: nn.Module, source: str | None = None, num_classes: int | None = None,
               plan: dict | None = None, **training) -> dict:
    """The one checkpoint format (``model.pt``, and fine-tuning's resumable
    state): what rebuilds the architecture (the model's source: a zoo name,
    ``torchvision:NAME`` or ``timm:NAME``; class count, plan) and the weights,
    on the CPU; ``training`` adds fine-tuning's state (epoch, optimizer,
    scheduler, ...) as further keys. :func:`load_model` reads it with
    ``torch.load(weights_only=True)`` (older checkpoints name a zoo model in
    ``zoo``, which is still written for zoo models)."""
    zoo_name = source if source and not sources.is_source(source) else None
    return {"format": CHECKPOINT_FORMAT, "source": source, "zoo": zoo_name, "num_classes": num_classes,
            "plan": plan,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, **training}


def checkpoint_bytes(ckpt: dict) -> bytes:
    """A checkpoint as the bytes of its file."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()
