import json
import re
from pathlib import Path

import pytest

from hwprune.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fail(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, err


def assert_one_error_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["prune", "--device", "nope", "--model", "resnet20", "--budget-ms", "1", "--out", "o"], "ort-cpu-1t"),
    (["prune", "--device", "ort-cpu-1t", "--model", "resnet99", "--budget-ms", "1", "--out", "o"], "resnet56"),
    (["profile", "--device", "ort-cpu-1t", "--model", "missing/file.pt"], "does not exist"),
])
def test_bad_names_are_one_error_line(capsys, argv, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err
    assert_one_error_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("budget", ["-1", "0", "abc", "nan", "inf"])
def test_budget_must_be_a_positive_number(capsys, budget):
    code, err = fail(capsys, "prune", "--device", "ort-cpu-1t", "--model", "resnet20",
                     "--budget-ms", budget, "--out", "o")
    assert code == 2 and "budget" in err
    assert_one_error_line(err)


def test_budget_in_percent_is_a_fraction_of_the_baseline(capsys, tmp_path, monkeypatch):
    from hwprune.cli.prune import Fraction, budget, budget_kwargs
    assert budget("50%") == (None, 0.5) and isinstance(budget("50%")[1], Fraction)
    assert budget_kwargs(budget("50%")[1]) == {"budget_ms": None, "budget_fraction": 0.5}
    assert budget_kwargs(budget("2.5")[1]) == {"budget_ms": 2.5}
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "prune", "--device", "ort-cpu-1t", "--model", "resnet20",
                         "--budget-ms", "torch-cpu-1t=50%", "--out", "o")
    assert code == 2 and "--device only" in err
    assert_one_error_line(err)
    code, err = fail(capsys, "prune", "--device", "ort-cpu-1t", "--model", "resnet20", "--budget-ms", "-5%",
                     "--out", "o")
    assert code == 2 and "budget" in err


def test_non_model_file_is_an_error(capsys, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code, out, err = run(capsys, "export", "--model", str(bad), "--format", "onnx")
    assert code == 2 and "cannot read model file" in err
    assert_one_error_line(err)


def test_corrupt_device_file_is_an_error_and_left_alone(capsys, tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text("name = [unclosed")
    monkeypatch.setenv("HWPRUNE_DEVICES_DIR", str(tmp_path))
    code, out, err = run(capsys, "devices")
    assert code == 2 and "bad.toml" in err and "corrupt" in err
    assert (tmp_path / "bad.toml").read_text() == "name = [unclosed"


def test_devices_lists_the_builtin_ones_as_json(capsys, tmp_path):
    code, out, err = run(capsys, "devices", "--json", "--store", str(tmp_path / "s.sqlite"))
    data = json.loads(out)
    names = {d["name"]: d for d in data["devices"]}
    assert code == 0 and names["ort-cpu-1t"]["available"] and names["ort-cpu-1t"]["step_channels"] in (4, 8, 16, 32)
    assert not names["torch-cuda-fp16"]["available"] or names["torch-cuda-fp16"]["reason"] == ""


def test_every_subcommand_has_help(capsys):
    for cmd in ("demo", "profile", "prune", "export", "devices"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "--json" in capsys.readouterr().out


def test_prune_writes_a_folder_that_export_reads(capsys, tmp_path, shared_store):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("old")  # replaced atomically, never half-written
    code, text, err = run(capsys, "prune", "--device", "ort-cpu-1t", "--model", "resnet20",
                          "--budget-ms", "0.01", "--out", str(out), "--store", str(shared_store.path))
    assert code == 2 and "smallest network" in err and (out / "old.txt").exists()
    code, text, err = run(capsys, "profile", "--device", "ort-cpu-1t", "--model", "resnet20", "--json",
                          "--store", str(shared_store.path))
    base = json.loads(text)["baseline_ms"]
    code, text, err = run(capsys, "prune", "--device", "ort-cpu-1t", "--model", "resnet20", "--json",
                          "--budget-ms", str(0.7 * base), "--out", str(out), "--store", str(shared_store.path))
    data = json.loads(text)
    assert code == 0 and data["measured_ms"] <= 1.03 * data["budget_ms"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "plan.json", "result.json"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "hwprune-plan/1" and plan["groups"]
    code, text, err = run(capsys, "export", "--model", str(out / "model.pt"), "--format", "onnx",
                          "--out", str(tmp_path / "again.onnx"))
    assert code == 0 and (tmp_path / "again.onnx").stat().st_size > 1000
    code, text, err = run(capsys, "export", "--model", str(out / "model.pt"), "--format", "tensorrt",
                          "--out", str(tmp_path / "m.engine"))
    assert code == 2 and "tensorrt" in err and "trtexec --onnx=" in err
    assert_one_error_line(err)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2 and block[0].endswith("hwprune demo")
    assert block[1] in (ROOT / ".ci" / "run").read_text().splitlines()
