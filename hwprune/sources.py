"""Models named by where they come from: ``torchvision:NAME`` and ``timm:NAME``.

Built with random weights (torchvision ``weights=None``, timm
``pretrained=False``); nothing is downloaded. The default input is the
model's own size: timm's ``pretrained_cfg["input_size"]``, torchvision's 224
(299 for ``inception_v3``). ``googlenet`` and ``inception_v3`` are built
without their auxiliary heads (``aux_logits=False``, ``init_weights=True``)
so that they trace. The packages are optional (``pip install
'hwprune[torchvision]'`` / ``'hwprune[timm]'``) and imported only here, when
a model is asked for.
"""
from __future__ import annotations

import difflib
import importlib

import torch
from torch import nn

from hwprune.errors import UserError

PREFIXES = ("torchvision", "timm")
TORCHVISION_SIZES = {"inception_v3": 299}   # every other torchvision classifier: 224
TORCHVISION_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                      "inception_v3": {"aux_logits": False, "init_weights": True}}
LIST_HINT = {"torchvision": "python -c \"import torchvision; print(torchvision.models.list_models("
                            "module=torchvision.models))\"",
             "timm": "python -c \"import timm; print(timm.list_models('*PATTERN*'))\""}


def is_source(spec: str) -> bool:
    """Whether ``spec`` names a model as ``torchvision:NAME`` or ``timm:NAME``."""
    prefix, sep, name = str(spec).partition(":")
    return bool(sep) and prefix in PREFIXES


def split(spec: str) -> tuple[str, str]:
    prefix, sep, name = str(spec).partition(":")
    if not sep or prefix not in PREFIXES or not name:
        raise UserError(f"model {spec!r} is not of the form torchvision:NAME or timm:NAME")
    return prefix, name


def package(prefix: str):
    """Import ``torchvision`` or ``timm``; a :class:`UserError` says how to install it."""
    try:
        return importlib.import_module(prefix)
    except Exception as exc:   # not installed, or its compiled parts do not load
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{prefix}:... models need the {prefix} package, which is not installed or fails to "
                        f"import here ({why}); install it with pip install 'hwprune[{prefix}]'") from None


def names(prefix: str) -> list[str]:
    """The model names ``prefix`` (torchvision: image classifiers only) offers."""
    pkg = package(prefix)
    if prefix == "torchvision":
        return sorted(pkg.models.list_models(module=pkg.models))
    return list(pkg.list_models())


def check_name(prefix: str, name: str) -> None:
    if prefix == "timm" and package("timm").is_model(name):   # also NAME.TAG (a pretrained config)
        return
    known = names(prefix)
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(f'{prefix}:{c}' for c in close)}; " if close else ""
    raise UserError(f"unknown {prefix} model {name!r}; {hint}list them with {LIST_HINT[prefix]}")


def timm_input_size(cfg) -> tuple[int, ...] | None:
    if cfg is None:
        return None
    size = cfg.get("input_size") if isinstance(cfg, dict) else getattr(cfg, "input_size", None)
    return tuple(int(v) for v in size) if size else None


def default_input_shape(spec: str) -> tuple[int, int, int, int]:
    """The model's own input size (batch 1), without building big models."""
    prefix, name = split(spec)
    check_name(prefix, name)
    if prefix == "torchvision":
        side = TORCHVISION_SIZES.get(name, 224)
        return (1, 3, side, side)
    size = timm_input_size(package("timm").models.get_pretrained_cfg(name))
    if size is None:
        size = model_input_size(build(spec))
    return (1, *size)


def model_input_size(model: nn.Module) -> tuple[int, ...]:
    """A timm model's ``pretrained_cfg`` (or ``default_cfg``) input size; (3, 224, 224) without one."""
    for attr in ("pretrained_cfg", "default_cfg"):
        size = timm_input_size(getattr(model, attr, None))
        if size:
            return size
    return (3, 224, 224)


def build(spec: str, num_classes: int | None = None) -> nn.Module:
    """The model ``spec`` names, with random weights, in eval mode."""
    prefix, name = split(spec)
    check_name(prefix, name)
    kw = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        if prefix == "torchvision":
            pkg = package("torchvision")
            model = pkg.models.get_model(name, weights=None, **TORCHVISION_KWARGS.get(name, {}), **kw)
        else:
            model = package("timm").create_model(name, pretrained=False, **kw)
    except UserError:
        raise
    except Exception as exc:   # e.g. timm NAME.TAG with an unknown tag
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"cannot build {spec}: {why}") from None
    return model.eval()


def output_classes(model: nn.Module, default: int = 1000) -> int:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 0 else default


def create(spec: str, num_classes: int | None = None, input_shape=None,
           seed: int = 0) -> tuple[nn.Module, torch.Tensor, int]:
    """Build ``spec`` (eval mode) and a random example input of ``input_shape``
    (default: the model's own size); returns (model, input, number of classes)."""
    torch.manual_seed(seed)
    model = build(spec, num_classes)
    if input_shape:
        shape = tuple(int(v) for v in input_shape)
    elif split(spec)[0] == "timm":
        shape = (1, *model_input_size(model))
    else:
        shape = default_input_shape(spec)
    return model, torch.randn(*shape), int(num_classes) if num_classes else output_classes(model)
