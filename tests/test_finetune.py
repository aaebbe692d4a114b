"""--data loading, fine-tuning with distillation, checkpoints, resume, DDP and
the finetune command (tiny models; nothing here measures latency)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hwprune.cli.main import main
from hwprune.datasets import load_loaders
from hwprune.errors import UserError
from hwprune.train.finetune import FinetuneConfig, finetune, load_checkpoint

SHAPE = (1, 3, 8, 8)
REPO = Path(__file__).resolve().parent.parent


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 3, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    return x, y


@pytest.fixture
def npz(tmp_path):
    x, y = arrays()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path


def loaders(batch=16):
    x, y = arrays()
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DataLoader(ds, batch_size=batch, shuffle=True), DataLoader(ds, batch_size=64)


# ---- --data -----------------------------------------------------------------------

def test_digits_and_npz_loaders(npz, tmp_path):
    tr, va = load_loaders("digits", torch.randn(1, 3, 16, 16), 10, batch_size=32)
    x, y = next(iter(tr))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.int64
    tr, va = load_loaders(str(npz), torch.randn(*SHAPE), 3, batch_size=16)
    assert len(tr.dataset) == 77 and len(va.dataset) == 19  # a fixed 20 % held out
    x, y = arrays(40, seed=1)
    xv, yv = arrays(10, seed=2)
    p = tmp_path / "val.npz"
    np.savez(p, x=x, y=y, x_val=xv, y_val=yv.astype(np.int32))
    tr, va = load_loaders(str(p), torch.randn(*SHAPE), 3)
    assert len(tr.dataset) == 40 and len(va.dataset) == 10
    assert torch.equal(va.dataset.tensors[1], torch.from_numpy(yv.astype(np.int64)))


@pytest.mark.parametrize("arrays_, msg", [
    ({"x": "ok"}, "has no array 'y'"),
    ({"y": "ok"}, "has no array 'x' \\(it has: y\\)"),
    ({"x": "int", "y": "ok"}, "x in d.npz has dtype int64; inputs must be floating point"),
    ({"x": "ok", "y": "float"}, "y in d.npz has dtype float64; labels must be integers"),
    ({"x": "shape", "y": "ok"}, r"x in d.npz has shape \[96, 3, 4, 4\]; this model takes \[N, 3, 8, 8\]"),
    ({"x": "ok", "y": "short"}, r"y in d.npz has shape \[95\]; it must be \[96\]"),
    ({"x": "ok", "y": "big"}, r"label 3 is out of range; labels must be class indices 0..2"),
    ({"x": "ok", "y": "negative"}, "label -1 is out of range"),
    ({"x": "nan", "y": "ok"}, "contains NaN"),
    ({"x": "ok", "y": "ok", "x_val": "ok"}, "only one of x_val and y_val"),
])
def test_npz_problems_are_one_clear_error(tmp_path, arrays_, msg):
    x, y = arrays()
    variants = {"ok": None, "int": x.astype(np.int64), "float": y.astype(np.float64),
                "shape": x[:, :, :4, :4], "short": y[:-1], "big": np.where(y == 2, 3, y),
                "negative": np.where(y == 2, -1, y), "nan": np.where(x > 3, np.nan, x).astype(np.float32)}
    data = {k: (x if k.startswith("x") else y) if variants[v] is None else variants[v] for k, v in arrays_.items()}
    path = tmp_path / "d.npz"
    np.savez(path, **data)
    with pytest.raises(UserError, match=msg):
        load_loaders(str(path), torch.randn(*SHAPE), 3)


def test_other_data_problems(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_loaders(str(tmp_path / "none.npz"), torch.randn(*SHAPE), 3)
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(UserError, match="single array"):
        load_loaders(str(tmp_path / "a.npy"), torch.randn(*SHAPE), 3)
    with pytest.raises(UserError, match="digits gives 3xSxS images"):
        load_loaders("digits", torch.randn(1, 1, 8, 8), 10)
    with pytest.raises(UserError, match="digits has 10 classes; this model has 3 outputs"):
        load_loaders("digits", torch.randn(*SHAPE), 3)


DATA_MODULE = '''
import os
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class Interruptible(Dataset):
    """Raises KeyboardInterrupt at the STOP-th item fetched while the file STOP exists."""

    def __init__(self, x, y):
        self.x, self.y, self.fetched = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.fetched += 1
        if os.path.exists("STOP") and self.fetched > int(open("STOP").read()):
            raise KeyboardInterrupt
        return self.x[i], self.y[i]


def _xy(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None], y


def loaders():
    x, y = _xy()
    return DataLoader(Interruptible(x, y), batch_size=16, shuffle=True), DataLoader(TensorDataset(x, y), 64)


def wrong_shape():
    x, y = _xy()
    return DataLoader(TensorDataset(x[:, :, :4], y), 16), DataLoader(TensorDataset(x, y), 16)


def wrong_labels():
    x, y = _xy()
    return DataLoader(TensorDataset(x, y + 5), 16), DataLoader(TensorDataset(x, y), 16)


def one():
    return loaders()[0]
'''


@pytest.fixture
def data_module(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(DATA_MODULE)
    monkeypatch.chdir(tmp_path)
    yield "mydata"
    sys.modules.pop("mydata", None)


def test_module_function_data(data_module):
    tr, va = load_loaders(f"{data_module}:loaders", torch.randn(*SHAPE), 3)
    assert len(tr.dataset) == 96
    for fn, msg in [("nothing", "has no function 'nothing'"), ("one", r"must return \(train_loader, val_loader\)"),
                    ("wrong_shape", r"train inputs are \(16, 3, 4, 8\)"),
                    ("wrong_labels", "label 7 is out of range")]:
        with pytest.raises(UserError, match=msg):
            load_loaders(f"{data_module}:{fn}", torch.randn(*SHAPE), 3)
    with pytest.raises(UserError, match="cannot import module 'nomodule'"):
        load_loaders("nomodule:f", torch.randn(*SHAPE), 3)


# ---- the loop ---------------------------------------------------------------------

def test_finetune_distills_with_a_cosine_schedule_and_shows_loss_and_accuracy():
    tr, va = loaders()
    teacher = tiny(1)
    finetune(teacher, tr, va, FinetuneConfig(epochs=4, lr=0.05, kd=False))
    student = tiny(2)
    before = student.state_dict()["5.weight"].clone()
    seen = []

    class Bar(list):
        def set_postfix(self, **kw):
            seen.append(kw)

    def progress(it, desc="", unit="", total=None):
        assert unit == "batch" and total == len(it)
        return Bar(it)
    res = finetune(student, tr, va, FinetuneConfig(epochs=3, lr=0.05), teacher=teacher, progress=progress)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.resumed_from == 0
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)   # the cosine reaches 0
    assert res.history[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi / 3)))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.val_accuracy == res.history[-1]["val_accuracy"] and 0.0 <= res.val_accuracy <= 1.0
    assert len(seen) == 3 * len(tr) and {"loss", "acc"} <= set(seen[-1])
    assert not torch.equal(before, student.state_dict()["5.weight"]) and not student.training
    with pytest.raises(UserError, match="needs the unpruned model as teacher"):
        finetune(tiny(), tr, va, FinetuneConfig(epochs=1))


class StopAt(Dataset):
    """A dataset that raises KeyboardInterrupt at its ``stop``-th item (Ctrl-C mid-epoch)."""

    def __init__(self, base, stop):
        self.base, self.stop, self.fetched = base, stop, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.fetched += 1
        if self.stop is not None and self.fetched > self.stop:
            raise KeyboardInterrupt
        return self.base[i]


def test_interrupted_run_resumes_from_the_saved_epoch_and_matches_an_uninterrupted_one(tmp_path):
    x, y = arrays()
    base = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    va = DataLoader(base, batch_size=64)
    cfg = FinetuneConfig(epochs=3, lr=0.05, seed=3)
    teacher = tiny(1)
    ref = tiny(2)
    finetune(ref, DataLoader(base, batch_size=16), va, cfg, teacher=teacher)

    ckpt = tmp_path / "state.pt"
    student = tiny(2)
    with pytest.raises(KeyboardInterrupt):  # stopped during epoch 2
        finetune(student, DataLoader(StopAt(base, 96 + 40), batch_size=16), va, cfg, teacher=teacher,
                 checkpoint=ckpt)
    saved = torch.load(io.BytesIO(ckpt.read_bytes()), weights_only=True)  # no pickled code inside
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    resumed = tiny(2)
    res = finetune(resumed, DataLoader(base, batch_size=16), va, cfg, teacher=teacher, checkpoint=ckpt)
    assert res.resumed_from == 1 and [h["epoch"] for h in res.history] == [1, 2, 3]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert load_checkpoint(ckpt)["epoch"] == 3
    # a finished run has nothing left to do
    again = tiny(2)
    res = finetune(again, DataLoader(base, batch_size=16), va, cfg, teacher=teacher, checkpoint=ckpt)
    assert res.resumed_from == 3 and torch.equal(again.state_dict()["5.weight"], ref.state_dict()["5.weight"])
    # other settings or another network are refused, unless restarting
    with pytest.raises(UserError, match=r"other settings \(lr 0.05 -> 0.1\)"):
        finetune(tiny(2), DataLoader(base, batch_size=16), va, FinetuneConfig(epochs=3, lr=0.1, seed=3),
                 teacher=teacher, checkpoint=ckpt)
    wider = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(UserError, match="belongs to another network"):
        finetune(wider, DataLoader(base, batch_size=16), va, cfg, teacher=teacher, checkpoint=ckpt)
    res = finetune(wider, DataLoader(base, batch_size=16), va, cfg, teacher=teacher, checkpoint=ckpt, restart=True)
    assert res.resumed_from == 0 and load_checkpoint(ckpt)["architecture"][0][1] == [16, 3, 3, 3]


def test_ddp_path_in_one_gloo_process(tmp_path):
    tr, va = loaders()
    ref, student = tiny(2), tiny(2)
    cfg = FinetuneConfig(epochs=2, lr=0.05, kd=False)
    finetune(ref, tr, va, cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        res = finetune(student, tr, va, cfg, checkpoint=tmp_path / "s.pt")
    finally:
        dist.destroy_process_group()
    assert res.world_size == 1 and load_checkpoint(tmp_path / "s.pt")["epoch"] == 2
    for k, v in ref.state_dict().items():  # DDP with one process trains exactly like no DDP
        assert torch.allclose(v.float(), student.state_dict()[k].float(), atol=1e-6), k


# ---- the command -----------------------------------------------------------------

@pytest.fixture
def pickled(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny(1), path)
    return path


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_finetune_command_writes_outputs_and_resumes(tmp_path, npz, pickled, capsys, monkeypatch):
    out = tmp_path / "ft"
    common = ["finetune", "--model", str(pickled), "--trust-pickle", "--input-shape", "1,3,8,8",
              "--data", str(npz), "--epochs", "2", "--batch-size", "16", "--out", str(out),
              "--train-device", "cpu"]
    rc, _, err = _run(common, capsys)
    assert rc == 2 and err.strip() == ("error: distillation needs the unpruned model: pass --teacher MODEL "
                                        "(zoo name or file), or --no-kd")
    rc, text, _ = _run(common + ["--teacher", str(pickled)], capsys)
    assert rc == 0 and "fine-tuned 2 epochs (distillation, 1 process(es))" in text
    report = json.loads((out / "finetune.json").read_text())
    assert report["kd"] and len(report["history"]) == 2 and report["resumed_from_epoch"] == 0
    assert report["onnx_max_abs_diff"] < 1e-4 and (out / "model.onnx").stat().st_size > 0
    assert torch.load(out / "model.pt", weights_only=True)["state_dict"]
    rc, text, _ = _run(common + ["--teacher", str(pickled), "--json"], capsys)  # finished: nothing to redo
    assert rc == 0 and json.loads(text)["resumed_from_epoch"] == 2
    rc, _, err = _run(common + ["--teacher", str(pickled), "--lr", "0.5"], capsys)
    assert rc == 2 and "other settings (lr 0.01 -> 0.5)" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(common[:7] + [str(npz.parent / "missing.npz")] + common[8:] + ["--no-kd"], capsys)
    assert rc == 2 and "missing.npz does not exist" in err


def test_finetune_command_interrupted_then_resumed(tmp_path, data_module, pickled, capsys):
    common = ["finetune", "--model", str(pickled), "--trust-pickle", "--input-shape", "1,3,8,8",
              "--data", f"{data_module}:loaders", "--epochs", "3", "--train-device", "cpu", "--no-kd"]
    rc, _, _ = _run(common + ["--out", str(tmp_path / "ref")], capsys)
    assert rc == 0
    Path("STOP").write_text(str(96 + 50))  # Ctrl-C during the second epoch
    rc, _, err = _run(common + ["--out", str(tmp_path / "run")], capsys)
    assert rc == 130 and "fine-tuning interrupted" in err and "to resume" in err
    assert load_checkpoint(tmp_path / "run" / "finetune-state.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "model.pt").exists()
    Path("STOP").unlink()
    rc, text, _ = _run(common + ["--out", str(tmp_path / "run"), "--json"], capsys)
    assert rc == 0 and json.loads(text)["resumed_from_epoch"] == 1
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, npz, pickled):
    out = tmp_path / "ddp"
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "hwprune", "finetune",
           "--model", str(pickled), "--trust-pickle", "--input-shape", "1,3,8,8",
           "--teacher", str(pickled), "--data", str(npz), "--epochs", "2", "--batch-size", "16",
           "--out", str(out), "--train-device", "cpu", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    ranks = "".join(f"--- {p.relative_to(logs)}\n{p.read_text()[-3000:]}" for p in sorted(logs.rglob("*.log")))
    assert proc.returncode == 0, ranks + proc.stderr[-1000:]
    report = json.loads((out / "finetune.json").read_text())
    assert report["world_size"] == 2 and len(report["history"]) == 2
    # each process saw half of the 77 training samples per epoch: 3 batches of 16 or fewer
    state = load_checkpoint(out / "finetune-state.pt")
    assert state["config"]["world_size"] == 2 and state["epoch"] == 2
    assert state["scheduler"]["last_epoch"] == 2 * 3


def test_prune_finetune_needs_data(capsys):
    rc, _, err = _run(["prune", "--model", "resnet20", "--device", "ort-cpu-1t", "--budget-ms", "0.5",
                       "--finetune-epochs", "2", "--out", "unused"], capsys)
    assert rc == 2 and err.strip() == ("error: --finetune-epochs needs --data (digits, a .npz file or "
                                        "module:function)")


@pytest.mark.slow
def test_prune_with_data_driven_importance_then_finetune(tmp_path, npz, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1),
                          nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))
    path = tmp_path / "wide.pt"
    torch.save(model, path)
    out = tmp_path / "pruned"
    rc, text, err = _run(["prune", "--model", str(path), "--trust-pickle", "--input-shape", "1,3,8,8",
                          "--device", "ort-cpu-1t", "--grid", "8", "--max-flops", "150k", "--importance", "taylor",
                          "--data", str(npz), "--finetune-epochs", "2", "--batch-size", "16",
                          "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    data = json.loads(text)
    assert data["importance"] == "taylor" and data["flops_after"] <= 150e3
    ft = data["finetune"]
    assert ft["kd"] and len(ft["history"]) == 2 and ft["resumed_from_epoch"] == 0
    assert json.loads((out / "finetune.json").read_text())["accuracy"] == ft["accuracy"]
    assert (out / "plan.json").exists() and (out / "finetune-state.pt").exists()
