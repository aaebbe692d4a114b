"""The demo's building blocks: digits data, training / distillation, report files, tables."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from hwprune import report
from hwprune.datasets import digits_loaders
from hwprune.train.loop import evaluate, kd_loss, train
from profilers import atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loaders():
    return digits_loaders(batch_size=64, seed=0, size=32)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10))


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_digits_loaders_shapes_dtypes_and_labels(loaders):
    train_loader, test_loader = loaders
    x_tr, y_tr = _all(train_loader)
    x_te, y_te = _all(test_loader)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.shape[1:] == (3, 32, 32) and x_te.shape[1:] == (3, 32, 32)
    assert len(x_tr) + len(x_te) == 1797
    assert abs(len(x_te) / 1797 - 0.2) < 0.01
    assert set(y_tr.tolist()) == set(range(10)) and set(y_te.tolist()) == set(range(10))
    assert torch.equal(x_tr[:, 0], x_tr[:, 1]) and torch.equal(x_tr[:, 1], x_tr[:, 2])
    # normalised with the training split's statistics (before upsampling)
    assert abs(float(x_tr.mean())) < 0.1 and 0.7 < float(x_tr.std()) < 1.3
    assert torch.isfinite(x_tr).all() and torch.isfinite(x_te).all()


def test_digits_split_is_deterministic_and_seed_only_orders():
    train_a, test_a = digits_loaders(batch_size=64, seed=0, size=32)
    train_b, test_b = digits_loaders(batch_size=64, seed=1, size=32)
    xa, ya = _all(test_a)
    xb, yb = _all(test_b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    tr_a, tr_b = _all(train_a)[1], _all(train_b)[1]
    assert torch.equal(torch.bincount(tr_a, minlength=10), torch.bincount(tr_b, minlength=10))
    assert not torch.equal(tr_a, tr_b)  # another seed shuffles differently
    again = _all(digits_loaders(batch_size=64, seed=0, size=32)[0])[1]
    assert torch.equal(tr_a, again)  # the same seed gives the same batch order
    assert not torch.equal(tr_a, _all(train_a)[1])  # and each epoch is a new order


def test_digits_size_option():
    train_loader, _ = digits_loaders(batch_size=16, size=16)
    x, y = next(iter(train_loader))
    assert x.shape == (16, 3, 16, 16) and y.shape == (16,)


def test_tiny_model_trains_beyond_chance(loaders):
    train_loader, test_loader = loaders
    model = tiny_cnn()
    before = evaluate(model, test_loader)
    out = train(model, train_loader, epochs=1, lr=0.1, seed=0)
    assert out is model and not model.training
    acc = evaluate(model, test_loader)
    assert 0.0 <= acc <= 1.0
    assert acc > 0.3 and acc > before


def test_kd_loss_matches_definition_and_is_zero_for_identical_logits():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    T, a = 3.0, 0.7
    pt, ps = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    expected = (1 - a) * nn.functional.cross_entropy(s, y) + a * T * T * kl
    assert torch.allclose(kd_loss(s, t, y, a, T), expected, atol=1e-6)
    assert torch.allclose(kd_loss(s, s, y, 1.0, T), torch.tensor(0.0), atol=1e-6)


def test_distillation_path_changes_weights_and_leaves_teacher_alone(loaders):
    train_loader, _ = loaders
    teacher = tiny_cnn(seed=1).eval()
    teacher_state = copy.deepcopy(teacher.state_dict())
    student = tiny_cnn(seed=2)
    before = copy.deepcopy(student.state_dict())
    small = [b for _, b in zip(range(3), train_loader)]
    seen = []

    def progress(it, desc, unit):
        seen.append((desc, unit))
        return it

    train(student, small, epochs=1, lr=0.05, teacher=teacher, kd_alpha=0.5, kd_T=4.0, progress=progress)
    assert seen == [("fine-tuning", "epoch")]
    assert not student.training and not teacher.training
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())


def test_train_rejects_bad_arguments(loaders):
    with pytest.raises(ValueError):
        train(tiny_cnn(), loaders[0], epochs=-1)
    with pytest.raises(ValueError):
        train(tiny_cnn(), loaders[0], epochs=1, teacher=tiny_cnn(), kd_alpha=1.5)


ROWS = {"baseline": {"measured_ms": 1.234, "predicted_ms": None, "params": 272474, "flops": 41_000_000,
                     "accuracy": 0.9861},
        "pruned": {"measured_ms": 0.601, "predicted_ms": 0.612, "params": 120000, "flops": 18_500_000,
                   "accuracy": 0.9722}}
ROUNDS = [{"target_ms": 0.596, "predicted_ms": 0.59, "measured_ms": 0.64},
          {"target_ms": 0.596, "predicted_ms": 0.55, "measured_ms": 0.601}]


def test_report_writes_both_files_atomically(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((os.path.dirname(os.fspath(src)), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    out = tmp_path / "out"
    md, png = report.write_demo_report(out, ROWS, ROUNDS, "ort-cpu-1t", "test box", budget_ms=0.617)
    assert md == out / "report.md" and png == out / "latency.png"
    assert {dst for _, dst in replaced} == {str(md), str(png)}
    assert all(src_dir == str(out) for src_dir, _ in replaced)  # temp file lives in the same folder
    assert sorted(p.name for p in out.iterdir()) == ["latency.png", "report.md"]  # no temp left over
    text = md.read_text(encoding="utf-8")
    for header in ("measured ms", "predicted ms", "params", "FLOPs", "test accuracy",
                   "target ms", "round"):
        assert header in text
    assert "1.234" in text and "0.601" in text and "98.61%" in text and "0.617" in text
    assert "ort-cpu-1t" in text and "test box" in text
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    if os.name == "posix":  # the usual mode of a new file, not the temp file's 0600
        umask = os.umask(0o022)
        os.umask(umask)
        assert md.stat().st_mode & 0o777 == 0o666 & ~umask


def test_report_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        report.atomic_write_text(tmp_path / "report.md", "x")
    assert list(tmp_path.iterdir()) == []


def test_report_without_rounds(tmp_path):
    md, png = report.write_demo_report(tmp_path, ROWS, [], "ort-cpu-1t", "test box")
    assert "No rounds" in md.read_text(encoding="utf-8")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_format_table_aligns_columns():
    text = report.format_table(["model", "ms", "accuracy"],
                               [["baseline", "1.234", "98.6%"], ["pruned", "0.6", "97.2%"]])
    lines = text.splitlines()
    assert len(lines) == 4
    rule = lines[1]
    assert set(rule) == {"-", " "}
    # column spans from the rule line: [start, end) of each run of dashes
    spans, i = [], 0
    while i < len(rule):
        if rule[i] == "-":
            j = i
            while j < len(rule) and rule[j] == "-":
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    assert spans == [(0, 8), (10, 15), (17, 25)]
    cells = [[line[a:b] for a, b in spans] for line in (lines[0], lines[2], lines[3])]
    assert [c[0] for c in cells] == ["model   ", "baseline", "pruned  "]  # text: left-aligned
    assert [c[1] for c in cells] == ["   ms", "1.234", "  0.6"]  # numbers: right-aligned
    assert [c[2] for c in cells] == ["accuracy", "   98.6%", "   97.2%"]
    with pytest.raises(ValueError):
        report.format_table(["a", "b"], [["1"]])


def test_markdown_table_escapes_and_aligns():
    text = report.markdown_table(["name", "ms"], [["a|b", "1.5"], ["c", "2"]])
    lines = text.splitlines()
    assert lines[0] == "| name | ms |"
    assert lines[1] == "| --- | ---: |"
    assert lines[2] == "| a\\|b | 1.5 |"
    assert len(lines) == 4
