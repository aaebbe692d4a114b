"""Every torchvision and timm CNN family builds a pruning space, prunes to half
width, runs, and re-applies its plan; constructs the graph cannot prune are
frozen and named (tiny hand-written models)."""
import copy
import warnings

import pytest
import torch
from torch import nn

from hwprune.export.onnx import onnx_bytes_checked
from hwprune.export.parity import check_parity
from hwprune.graph.plans import apply_plan
from hwprune.graph.space import FrozenChannelsWarning, PruningSpace
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.loop.engine import count_params, make_plan

FAST = {"resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "ghostnet_100", "squeezenet1_1", "convnext_atto"}
TORCHVISION = ["alexnet", "vgg11_bn", "resnet18", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
               "mnasnet0_5", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "regnet_x_400mf",
               "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "googlenet",
               "inception_v3", "convnext_tiny"]
TIMM = ["ghostnet_100", "rexnet_100", "hrnet_w18_small", "mixnet_s", "resnest14d", "dla34", "cspresnet50",
        "convnext_atto"]
CASES = [pytest.param(src, n, marks=() if n in FAST else pytest.mark.slow)
         for src, names in (("torchvision", TORCHVISION), ("timm", TIMM)) for n in names]


def _model(src: str, name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if src == "torchvision":
        import torchvision
        kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = getattr(torchvision.models, name)(**kw)
    else:
        import timm
        model = timm.create_model(name)
    size = 96 if name == "inception_v3" else 64  # inception_v3 needs 75 px or more
    return model.eval(), torch.randn(1, 3, size, size)


def _half(space: PruningSpace):
    """Every other channel of every segment of every group (kept indices, choice)."""
    kept, choice = {}, {}
    for g in space.groups:
        segs = [seg[0::2] for seg in g.seg_index]
        kept[g.gid] = sorted(i for seg in segs for i in seg)
        choice[g.gid] = tuple(len(seg) for seg in segs)
    return kept, choice


@pytest.mark.parametrize("src,name", CASES)
def test_family_prunes_at_half_width(src, name):
    model, x = _model(src, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space = PruningSpace(model, (x,))
    assert space.groups, f"{name}: nothing prunable (frozen: {space.frozen})"
    kept, choice = _half(space)
    pruned = apply_kept(space, kept)
    check_widths(space, pruned, choice)
    with torch.no_grad():
        y = pruned(x)
        assert y.shape == model(x).shape
    assert count_params(pruned) < count_params(model)
    plan = make_plan(space, kept, "ort-cpu-1t", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = apply_plan(copy.deepcopy(model), plan)  # the plan knows its input shape
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)
    # the pruned model exports to ONNX and ONNX Runtime agrees with PyTorch (relative to the output's scale)
    parity = check_parity(pruned, (x,), onnx_bytes_checked(pruned, (x,)))
    assert parity.max_rel_diff < 1e-4


# ---------------------------------------------------------------- the freezing guard

class SliceBlock(nn.Module):
    """Keeps a prefix of its input's channels, by a count stored in the module."""

    def __init__(self):
        super().__init__()
        self.k = 4
        self.conv = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.conv(x[:, :self.k])


class SplitBlock(nn.Module):
    """Splits its input's channels by sizes stored in the module (as MixNet's MixedConv2d)."""

    def __init__(self):
        super().__init__()
        self.splits = [3, 5]
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(x, self.splits, 1)
        return torch.cat([self.a(a), self.b(b)], 1)


class Net(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = block
        width = 6 if isinstance(block, SliceBlock) else 8
        self.mid = nn.Conv2d(width, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.head(torch.relu(self.mid(x))).mean((2, 3))


@pytest.mark.parametrize("block", [SliceBlock, SplitBlock])
def test_unsafe_construct_is_frozen_and_named(block):
    model, x = Net(block()).eval(), torch.randn(1, 3, 16, 16)
    with pytest.warns(FrozenChannelsWarning) as record:
        space = PruningSpace(model, (x,))
    assert [f.root for f in space.frozen] == ["stem"]
    frozen = space.frozen[0]
    assert (frozen.path, frozen.module_type, frozen.channels) == ("block", block.__name__, 8)
    text = " ".join(str(w.message) for w in record)
    assert "block" in text and block.__name__ in text and "stem" in text
    assert "stem" not in {g.root for g in space.groups}
    # the rest is pruned: the block's own output and the middle conv
    assert {"mid"} <= {g.root for g in space.groups}
    kept, choice = _half(space)
    pruned = apply_kept(space, kept)
    check_widths(space, pruned, choice)
    assert pruned.stem.out_channels == 8 and pruned.mid.out_channels == 8
    assert pruned(x).shape == (1, 10)


def test_channel_shuffle_freezes_only_what_crosses_it():
    """ShuffleNet's branch-internal widths prune; the channels the shuffle mixes stay."""
    model, x = _model("torchvision", "shufflenet_v2_x0_5")
    with pytest.warns(FrozenChannelsWarning):
        space = PruningSpace(model, (x,))
    roots = {g.root for g in space.groups}
    mid = [g for g in space.groups if g.root == "stage2.1.branch2.3"]  # conv1x1 -> depthwise -> conv1x1
    assert mid and mid[0].size == 24
    assert not any(r.endswith("branch2.5") for r in roots)
    shuffle = [f for f in space.frozen if f.root.endswith("branch2.5")]
    assert shuffle and all(f.module_type == "InvertedResidual" and f.path.startswith("stage") for f in shuffle)
    assert "shuffle" in shuffle[0].reason


def test_safe_model_freezes_nothing():
    model, x = Net(nn.Identity()).eval(), torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenChannelsWarning)
        space = PruningSpace(model, (x,))
    assert space.frozen == () and {g.root for g in space.groups} == {"stem", "mid"}


class ConcatSliceBlock(nn.Module):
    """RexNet's shortcut: the input added to the first channels of a wider output, the rest concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin = cin
        self.expand, self.project = nn.Conv2d(cin, 2 * cin, 1), nn.Conv2d(2 * cin, cout, 1)

    def forward(self, x):
        y = self.project(torch.relu(self.expand(x)))
        return torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], dim=1)


def test_a_channel_search_that_does_not_end_is_frozen_and_the_rest_pruned():
    import time

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                          *[ConcatSliceBlock(8 + 2 * i, 10 + 2 * i) for i in range(4)],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = PruningSpace(model, (torch.randn(1, 3, 16, 16),))
    assert time.perf_counter() - t0 < 30, "the search must be cut short, not run on"
    runaway = [f for f in space.frozen if "does not end" in f.reason]
    assert runaway
    assert any("does not end" in str(w.message) for w in caught if w.category is FrozenChannelsWarning)
    # every block's inner (expanded) width stays prunable, and the cut model runs
    roots = {g.root for g in space.groups}
    assert {f"{i}.expand" for i in range(1, 5)} <= roots
    kept = {g.gid: [i for seg in g.seg_index for i in seg[: (len(seg) + 1) // 2]] for g in space.groups}
    pruned = apply_kept(space, kept)
    assert pruned(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert count_params(pruned) < count_params(model)
