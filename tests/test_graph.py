import random

import archs
import pytest
import torch

from hwprune import zoo
from hwprune.graph.space import PruningSpace, group_options
from hwprune.graph.surgery import apply_kept, check_widths

MODELS = [("zoo", "resnet20"), ("zoo", "mobilenetv2"), ("zoo", "vgg16")] + [("arch", n) for n in archs.ARCHS]


def build(kind, name):
    return zoo.create(name) if kind == "zoo" else archs.create(name)


@pytest.mark.parametrize("kind,name", MODELS)
def test_random_plans_give_the_widths_the_space_predicts(kind, name):
    model, x = build(kind, name)
    space = PruningSpace(model, x)
    assert space.groups, "no prunable group found"
    options = {g.gid: group_options(g, 16, 8) for g in space.groups}
    rng = random.Random(0)
    for _ in range(2):
        choice = {gid: rng.choice(opts) for gid, opts in options.items()}
        kept = {g.gid: sorted(i for idx, k in zip(g.seg_index, choice[g.gid]) for i in rng.sample(idx, k))
                for g in space.groups}
        pruned = apply_kept(space, kept)
        check_widths(space, pruned, choice)  # raises on mismatch
        assert pruned(x).shape == model(x).shape
        assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind,name,classifier", [("zoo", "resnet20", "fc"), ("zoo", "mobilenetv2", "classifier"),
                                                  ("arch", "concat", "fc")])
def test_classifier_outputs_are_never_pruned(kind, name, classifier):
    model, x = build(kind, name)
    space = PruningSpace(model, x)
    assert space.output_layers == (classifier,)
    layer = next(l for l in space.layers if l.name == classifier)
    assert layer.out_terms == () and layer.fixed_out == layer.spec.out_channels


def test_residual_stage_is_one_group():
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    assert len(space.groups) == 12  # 3 residual streams + 9 block-internal widths
    stream = [g for g in space.groups if len(g.segments[0].layers) > 6]
    assert len(stream) == 3


def test_grouped_conv_prunes_within_its_groups_and_the_rest_prunes():
    model, x = archs.create("grouped")
    space = PruningSpace(model, x)
    g = next(l for l in space.layers if l.name == "grouped.0")
    assert len(g.in_terms) == len(g.out_terms) == 4  # one segment per conv group, kept alike
    assert space.layer_spec(g, space.full_choice()).groups == 4
    assert any(l.out_terms for l in space.layers if l.name == "tail.0")


def test_concat_meeting_a_residual_splits_into_segments():
    model, x = archs.create("concat_residual")
    space = PruningSpace(model, x)
    multi = [g for g in space.groups if len(g.segments) > 1]
    assert len(multi) == 1 and sorted(s.size for s in multi[0].segments) == [16, 48]


def test_flatten_into_linear_scales_by_spatial_size():
    model, x = archs.create("invres")
    space = PruningSpace(model, x)
    fc = next(l for l in space.layers if l.name == "fc")
    assert [t.mult for t in fc.in_terms] == [64]


def test_untraceable_model_is_a_clear_error():
    from hwprune.graph.space import GraphError

    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    with pytest.raises(GraphError, match="cannot trace"):
        PruningSpace(Bad(), torch.randn(1, 3, 8, 8))


def test_index_mappings_are_recomputed_after_a_prune_and_only_then(monkeypatch):
    """Torch-Pruning recomputes every concat and split mapping on each group
    asked for; the graph does it once after each prune: probing a concat net's
    groups costs none, and the groups asked for after pruning one still cut
    the widths the space predicts."""
    import copy

    import torch_pruning as tp

    from hwprune.graph.space import root_handler
    from hwprune.graph.trace import build_graph
    model, x = archs.create("concat")
    space = PruningSpace(model, (x,))
    calls, update = [], tp.dependency.index_mapping.update_index_mapping
    monkeypatch.setattr(tp.dependency.index_mapping, "update_index_mapping", lambda dg: (calls.append(1), update(dg)))
    net = copy.deepcopy(model)
    dg = build_graph(net, (x,))
    calls.clear()
    roots = [net.get_submodule(g.root) for g in space.groups]
    for root in roots * 3:
        dg.get_pruning_group(root, root_handler(root), idxs=[0])
    assert calls == []
    kept = {}
    for g, root in zip(space.groups, roots):
        dg.get_pruning_group(root, root_handler(root), idxs=list(range(1, g.size, 2))).prune()
        kept[g.gid] = list(range(0, g.size, 2))
    assert len(calls) == len(space.groups) - 1  # before every group asked for after a prune
    choice = {gid: (len(k),) for gid, k in kept.items()}
    check_widths(space, net, choice)
    torch.testing.assert_close(net(x), apply_kept(space, kept)(x))
