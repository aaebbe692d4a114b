"""A real ``hwprune agent`` process on loopback, measured through RemoteRuntime and the CLI."""
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hwprune.cli.main import main
from profilers import LayerSpec, Protocol, RuntimeUnavailable
from profilers.remote import RemoteError, RemoteRuntime

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
QUICK = Protocol(warmup_runs=2, warmup_s=0.0, min_runs=10, max_runs=200, max_s=0.2, target_rel=0.05)
SPEC = LayerSpec("conv", 16, 16, kernel=(3, 3), padding=(1, 1), height=16, width=16)


def start_agent(*extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HWPRUNE_AGENT_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "hwprune", "agent", "--port", "0", "--token", TOKEN, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_port(proc, timeout_s=60.0) -> int:
    """The port from the agent's ``device: remote:127.0.0.1:PORT`` line."""
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith("device: remote:127.0.0.1:"):
                return int(line.rsplit(":", 1)[1])
    finally:
        watchdog.cancel()
    proc.kill()
    raise AssertionError(f"agent did not start: {proc.stderr.read()}")


@pytest.fixture(scope="module")
def agents():
    procs = {"main": start_agent(), "tiny": start_agent("--max-upload-mib", "0.01")}  # start both, then wait
    try:
        yield {name: wait_port(p) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def runtime(port, token=TOKEN):
    return RemoteRuntime("127.0.0.1", port, token, timeout_s=60)


def small_net(width=8):
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(width, width, 3, padding=1)).eval()


def raw_post(port, path, body, token=TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_info_names_the_agent_and_the_boards_runtime(agents):
    fp = runtime(agents["main"]).fingerprint()
    assert fp["agent"] == f"127.0.0.1:{agents['main']}"
    assert fp["runtime"] == "remote:onnxruntime-cpu" and fp["threads"] == 1 and fp["version"]


def test_layer_spec_and_module_are_measured(agents):
    rt = runtime(agents["main"])
    t = rt.measure_spec(SPEC, protocol=QUICK)
    assert t.median_ms > 0 and t.runs >= QUICK.min_runs and t.iqr_ms >= 0
    m = rt.measure_module(small_net(), (torch.randn(1, 3, 16, 16),), protocol=QUICK)
    assert m.median_ms > 0 and m.runs >= QUICK.min_runs


def test_interleaved_returns_one_timing_per_model(agents):
    x = (torch.randn(1, 3, 16, 16),)
    timings = runtime(agents["main"]).measure_modules_interleaved([small_net(4), small_net(16), small_net(8)],
                                                                  x, protocol=QUICK)
    assert len(timings) == 3 and all(t.median_ms > 0 for t in timings)
    assert len({t.runs for t in timings}) == 1  # alternated: every model ran as often


@pytest.mark.parametrize("token,needle", [("", "no token"), ("wrong", "token is wrong")])
def test_missing_or_wrong_token_is_refused(agents, token, needle):
    with pytest.raises(RemoteError) as e:
        runtime(agents["main"], token).measure_spec(SPEC, protocol=QUICK)
    assert needle in str(e.value) and "HWPRUNE_AGENT_TOKEN" in str(e.value)
    status, body = raw_post(agents["main"], "/measure", b"x" * 1000, token=token)
    assert status == 401 and "token" in body["error"]


def test_oversized_upload_is_refused(agents):
    big = LayerSpec("conv", 64, 64, kernel=(3, 3), padding=(1, 1), height=8, width=8)  # ~150 kB of weights
    with pytest.raises(RemoteError) as e:
        runtime(agents["tiny"]).measure_spec(big, protocol=QUICK)
    assert "size limit" in str(e.value) and "--max-upload-mib" in str(e.value)
    status, body = raw_post(agents["tiny"], "/measure", b"\0" * 200_000)  # the agent's own check
    assert status == 413 and "size limit" in body["error"]


def test_non_onnx_body_is_refused(agents):
    status, body = raw_post(agents["main"], "/measure", b"import os; os.system('echo hi')\n" * 10)
    assert status == 400 and "not a valid ONNX model" in body["error"]
    status, body = raw_post(agents["main"], "/measure_interleaved", b'{"models": [{"bytes": 99}]}\nabc')
    assert status == 400 and "manifest" in body["error"]
    with pytest.raises(RemoteError, match="rejected the request: the body is not a valid ONNX"):
        runtime(agents["main"]).measure_onnx(b"\x80\x04not onnx")


def test_unreachable_agent_names_its_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeUnavailable) as e:  # RemoteError is a RuntimeUnavailable
        runtime(port).fingerprint()
    assert f"127.0.0.1:{port}" in str(e.value) and "hwprune agent" in str(e.value)


def test_cli_profiles_a_zoo_model_on_the_agent(agents, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HWPRUNE_AGENT_TOKEN", TOKEN)
    device = f"remote:127.0.0.1:{agents['main']}"
    code = main(["profile", "--device", device, "--model", "resnet20", "--json", "--store", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 0 and data["device"] == device
    assert data["shapes_measured"] > 0 and data["baseline_ms"] > 0


def test_cli_wrong_token_is_one_error_line(agents, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HWPRUNE_AGENT_TOKEN", "wrong")
    code = main(["profile", "--device", f"remote:127.0.0.1:{agents['main']}", "--model", "resnet20",
                 "--store", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "token" in lines[0]
