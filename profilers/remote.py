"""Measure on a remote board through its ``hwprune agent`` (see ``profilers.agent``).

The models are exported to ONNX here and sent to the agent, which runs them
with the board's ONNX Runtime (or, with ``runtime="openvino"``, its OpenVINO)
on random inputs of the same shapes. With ``runtime="executorch"`` they are
lowered to XNNPACK ``.pte`` programs here (this host needs executorch) and run
by the board's ExecuTorch. The wire carries ONNX or ``.pte`` bytes and JSON only.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict
from urllib.parse import urlencode

import numpy as np

from . import RuntimeUnavailable
from .agent import AGENT_VERSION, INPUTS_HEADER
from .agent_runtimes import BOARD_RUNTIMES, DEFAULT
from .inputs import as_inputs
from .onnx_export import OnnxModuleMeasurer
from .onnx_layers import layer_model
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol
from .specs import LayerSpec, Timing


class RemoteError(RuntimeUnavailable):
    """The agent cannot be reached or refused a request; the message names the
    agent and what to do."""


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.3g} MiB"


def _shapes(feeds: dict | None) -> dict | None:
    if not feeds:
        return None
    return {name: [int(d) for d in np.shape(v)] for name, v in feeds.items()}


def _timing(d) -> Timing:
    return Timing(median_ms=float(d["median_ms"]), iqr_ms=float(d["iqr_ms"]), runs=int(d["runs"]),
                  ci_rel=float(d["ci_rel"]), stable=bool(d["stable"]))


class RemoteRuntime(OnnxModuleMeasurer):
    """A board running ``hwprune agent``, measured over HTTP.

    ``threads`` (intra-op threads on the board) defaults to the agent's own
    setting; ``timeout_s`` bounds each request, waiting for the board's
    measurement lock included; ``runtime``: the board's runtime that measures
    (``onnxruntime``, ``openvino`` or ``executorch``).
    """

    kind = "remote"

    def __init__(self, host: str, port: int, token: str = "", timeout_s: float = 300.0,
                 threads: int | None = None, runtime: str = DEFAULT):
        if runtime not in BOARD_RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(BOARD_RUNTIMES)}, not {runtime!r}")
        self.host, self.port, self.token = str(host), int(port), str(token or "")
        self.timeout_s = float(timeout_s)
        self.threads = int(threads) if threads else None
        self.runtime = runtime
        self.lowering = None   # an ExecuTorchRuntime here, for its lowering and caches
        self._info: dict | None = None
        # never route the board's traffic through an HTTP proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _url(self, path: str, query: dict | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}" + (f"?{urlencode(query)}" if query else "")

    # --- transport ---------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, query: dict | None = None,
                 headers: dict | None = None) -> dict:
        if body is not None:
            limit = self.info().get("max_bytes") if path != "/info" else None
            if isinstance(limit, int) and len(body) > limit:
                raise RemoteError(f"the upload ({_mb(len(body))}) is over the size limit of the agent at "
                                  f"{self.address} ({_mb(limit)}); restart the agent with a larger --max-upload-mib")
        req = urllib.request.Request(self._url(path, query), data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/octet-stream", **(headers or {})})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, len(body or b"")) from None
        except TimeoutError:
            raise RemoteError(f"the agent at {self.address} did not answer within {self.timeout_s:g} s "
                              f"(busy with another client's measurement?); retry, or raise timeout_s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if body and isinstance(reason, (ConnectionResetError, BrokenPipeError)):
                raise RemoteError(f"the agent at {self.address} closed the connection during an upload of "
                                  f"{_mb(len(body))} (over its size limit?); check the agent's --max-upload-mib "
                                  f"and its log") from None
            raise RemoteError(f"no hwprune agent reachable at {self.address} ({reason}); start one on the "
                              f"board with `hwprune agent --host ADDRESS --port {self.port}` and check "
                              f"the address and port") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except ValueError as exc:
            raise RemoteError(f"bad response from {self.address} ({exc}); is an hwprune agent "
                              f"listening there?") from None

    def _http_error(self, exc: urllib.error.HTTPError, sent: int) -> RemoteError:
        try:
            message = str(json.loads(exc.read().decode("utf-8"))["error"])
        except Exception:  # not an agent's error body
            message = f"HTTP {exc.code} {exc.reason}"
        if exc.code == 401:
            what = "no token was given" if not self.token else "the token is wrong"
            return RemoteError(f"the agent at {self.address} refused the request: {what}; set "
                               f"$HWPRUNE_AGENT_TOKEN to the token the agent printed at start")
        if exc.code == 413:
            return RemoteError(f"the agent at {self.address} refused an upload of {_mb(sent)}: {message}")
        if exc.code == 400:
            return RemoteError(f"the agent at {self.address} rejected the request: {message}")
        return RemoteError(f"the agent at {self.address} failed (HTTP {exc.code}): {message}; "
                           f"see the agent's log")

    # --- runtime interface -------------------------------------------------
    def info(self) -> dict:
        """The agent's /info (cached after the first call)."""
        if self._info is None:
            info = self._request("GET", "/info")
            if info.get("agent") != "hwprune-agent" or not isinstance(info.get("runtime"), dict):
                raise RemoteError(f"bad response from {self.address}: not an hwprune agent")
            if info.get("agent_version") != AGENT_VERSION:
                raise RemoteError(f"the agent at {self.address} speaks version {info.get('agent_version')}, "
                                  f"this client {AGENT_VERSION}; install the same hwprune on both")
            self._info = info
        return self._info

    @property
    def measures_onnx(self) -> bool:
        """Whether whole models travel as ONNX (else as ``.pte`` programs)."""
        return BOARD_RUNTIMES[self.runtime][3] == "onnx"

    def fingerprint(self) -> dict:
        info = self.info()
        board = info["runtime"] if self.runtime == DEFAULT else (info.get("runtimes") or {}).get(self.runtime)
        if not isinstance(board, dict):
            served = ", ".join(info.get("runtimes") or [DEFAULT])
            raise RemoteError(f"the agent at {self.address} does not serve {self.runtime} (it serves {served}); "
                              f"install 'hwprune[{self.runtime}]' on the board and restart the agent")
        board = dict(board)
        fp = {**board, "runtime": f"remote:{board.get('runtime', '?')}", "agent": self.address,
              "agent_version": info["agent_version"]}
        if self.threads:
            fp["threads"] = self.threads
        return fp

    def _query(self, protocol: Protocol, kind: str) -> dict:
        q = {"kind": kind, **asdict(protocol)}
        if self.threads:
            q["threads"] = self.threads
        if self.runtime != DEFAULT:
            q["runtime"] = self.runtime
        return q

    def _decode(self, data: dict, key: str | None = None, count: int = 1) -> list[Timing]:
        try:
            items = data[key] if key else [data]
            if len(items) != count:
                raise ValueError(f"{len(items)} timings for {count} models")
            return [_timing(d) for d in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"bad response from {self.address} ({type(exc).__name__}: {exc}); "
                              f"install the same hwprune on the board and here") from None

    def measure_onnx(self, model_bytes: bytes, feeds: dict | None = None,
                     protocol: Protocol = MODEL_PROTOCOL, kind: str = "model") -> Timing:
        """One ONNX model; of ``feeds`` only the shapes travel (the agent
        generates random values)."""
        shapes = _shapes(feeds)
        headers = {INPUTS_HEADER: json.dumps(shapes)} if shapes else None
        data = self._request("POST", "/measure", bytes(model_bytes), self._query(protocol, kind), headers)
        return self._decode(data)[0]

    def measure_onnx_interleaved(self, models: list[tuple[bytes, dict | None]],
                                 protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        manifest = {"models": [{"bytes": len(b), "inputs": _shapes(f)} for b, f in models]}
        body = json.dumps(manifest).encode("utf-8") + b"\n" + b"".join(bytes(b) for b, _ in models)
        data = self._request("POST", "/measure_interleaved", body, self._query(protocol, "model"))
        return self._decode(data, "timings", len(models))

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        if not self.measures_onnx:
            from .torch_layers import layer_input
            return self.measure_pte(self.lowerer().layer_program(spec), (layer_input(spec),), protocol, "layer")
        return self.measure_onnx(layer_model(spec), protocol=protocol, kind="layer")

    # --- ExecuTorch programs -----------------------------------------------
    def lowerer(self):
        """The local ExecuTorch runtime that lowers models (and caches their programs)."""
        if self.lowering is None:
            from . import create_runtime
            self.lowering = create_runtime("executorch-xnnpack")
        return self.lowering

    def measure_pte(self, data: bytes, inputs, protocol: Protocol = MODEL_PROTOCOL, kind: str = "model") -> Timing:
        """One ``.pte`` program; of ``inputs`` only the shapes travel."""
        shapes = {f"input{i}": list(t.shape) for i, t in enumerate(as_inputs(inputs))}
        data = self._request("POST", "/measure", bytes(data), self._query(protocol, kind),
                             {INPUTS_HEADER: json.dumps(shapes)})
        return self._decode(data)[0]

    def measure_module(self, model, example_inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        if self.measures_onnx:
            return super().measure_module(model, example_inputs, protocol)
        return self.measure_pte(self.lowerer().program_of(model, example_inputs), example_inputs, protocol)

    def measure_modules_interleaved(self, models, example_inputs, protocol: Protocol = MODEL_PROTOCOL):
        if self.measures_onnx:
            return super().measure_modules_interleaved(models, example_inputs, protocol)
        shapes = {f"input{i}": list(t.shape) for i, t in enumerate(as_inputs(example_inputs))}
        programs = [self.lowerer().program_of(m, example_inputs) for m in models]
        manifest = {"models": [{"bytes": len(p), "inputs": shapes} for p in programs]}
        body = json.dumps(manifest).encode("utf-8") + b"\n" + b"".join(programs)
        data = self._request("POST", "/measure_interleaved", body, self._query(protocol, "model"))
        return self._decode(data, "timings", len(models))


__all__ = ["RemoteRuntime", "RemoteError"]
