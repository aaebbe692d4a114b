"""A real ``hwprune agent`` on loopback serving ExecuTorch (``.pte`` programs
lowered here) and OpenVINO (ONNX), and refusing uploads that are not programs."""
import http.client
import io
import json

import pytest
import torch
from test_remote import QUICK, SPEC, TOKEN, small_net, start_agent, wait_port

from hwprune import devices
from hwprune.errors import UserError
from profilers.blocks import block_runner
from profilers.remote import RemoteError, RemoteRuntime

X = torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def port():
    proc = start_agent()
    try:
        yield wait_port(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(port, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("runtime,kind", [("executorch", "executorch-xnnpack"), ("openvino", "openvino-cpu")])
def test_the_agent_measures_with_the_boards_runtime(port, runtime, kind):
    rt = RemoteRuntime("127.0.0.1", port, TOKEN, timeout_s=120, runtime=runtime)
    fp = rt.fingerprint()
    assert fp["runtime"] == f"remote:{kind}" and fp["version"] and fp["agent"] == f"127.0.0.1:{port}"
    assert rt.measure_spec(SPEC, protocol=QUICK).median_ms > 0
    thin, wide = rt.measure_modules_interleaved([small_net(8), small_net(96)], X, protocol=QUICK)
    assert wide.median_ms > thin.median_ms > 0
    assert rt.measures_onnx == (runtime != "executorch")
    assert block_runner(rt, small_net(8), X, QUICK)() > 0


def test_non_programs_are_refused_before_loading(port):
    q = "/measure?runtime=executorch&kind=model"
    shapes = {"X-Hwprune-Inputs": json.dumps({"input0": [1, 3, 16, 16]})}
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)   # a pickle: never loaded
    for body in (b"not a program at all, just bytes", buf.getvalue(), b"\x10\x00\x00\x00ET12" + b"\x00" * 8):
        status, reply = post(port, q, body, shapes)
        assert status == 400 and "not an ExecuTorch program" in reply["error"], reply
    status, reply = post(port, "/measure?runtime=tflite", b"x" * 32)
    assert status == 400 and "runtime must be one of" in reply["error"]


def test_a_program_needs_its_input_shapes(port):
    from profilers import create_runtime
    program = create_runtime("executorch-xnnpack").program_of(small_net(8), X)
    status, reply = post(port, "/measure?runtime=executorch", program)
    assert status == 400 and "input shapes" in reply["error"]
    status, reply = post(port, "/measure?runtime=executorch", program,
                         {"X-Hwprune-Inputs": json.dumps({"x": [1, 3, 16, 16]})})
    assert status == 400 and "input0" in reply["error"]


def test_a_runtime_the_board_lacks_names_the_extra():
    rt = RemoteRuntime("127.0.0.1", 1, runtime="openvino")
    rt._info = {"agent": "hwprune-agent", "agent_version": 1, "runtime": {"runtime": "onnxruntime-cpu"},
                "runtimes": {"onnxruntime": {"runtime": "onnxruntime-cpu"}}}
    with pytest.raises(RemoteError, match=r"does not serve openvino.*hwprune\[openvino\]"):
        rt.fingerprint()


def test_remote_device_names_pick_the_boards_runtime():
    assert dict(devices.get("remote:127.0.0.1:8765/executorch").options)["runtime"] == "executorch"
    assert dict(devices.get("remote:127.0.0.1:8765").options)["runtime"] == "onnxruntime"
    with pytest.raises(UserError, match="remote:127.0.0.1:8765/openvino"):
        devices.get("remote:127.0.0.1:8765/tflite")
