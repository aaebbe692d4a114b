"""An HTTP agent that runs on a board and measures models sent to it: ONNX on
ONNX Runtime (the default) or OpenVINO, ExecuTorch programs (``.pte``) on
ExecuTorch (query ``runtime=``; see :mod:`profilers.agent_runtimes`).

Run it on the board (``hwprune agent``), then profile from the host with the
device ``remote:HOST:PORT`` (:class:`profilers.remote.RemoteRuntime`). The
board needs Python, numpy, onnx and onnxruntime; nothing of hwprune's engine.

Endpoints (every request needs ``Authorization: Bearer <token>``):

- ``GET /info``: the agent version, its limits, the fingerprint of the
  board's ONNX Runtime (``runtime``) and of every runtime it serves (``runtimes``).
- ``POST /measure``: body = the bytes of one ONNX model. Query: ``kind=layer``
  or ``model`` (which protocol to start from), optional ``runtime``
  (``onnxruntime``, ``openvino``, ``executorch``: then the body is a ``.pte``
  and the input shapes are required), ``threads`` and
  protocol fields (``warmup_runs``, ``warmup_s``, ``min_runs``, ``max_runs``,
  ``max_s``, ``target_rel``). Optional header ``X-Hwprune-Inputs``: JSON
  ``{input name: shape}``. Returns the :class:`Timing` fields as JSON.
- ``POST /measure_interleaved``: body = one line of JSON, the manifest
  ``{"models": [{"bytes": n, "inputs": {...}}, ...]}``, then the models'
  bytes one after the other. Same query. Returns ``{"timings": [...]}``.

Inputs are random float32 tensors generated here, of the model's input shapes
(or the shapes given). Only ONNX (parsed and checked, external data refused)
and ExecuTorch programs (header checked, then verified on load) are accepted;
nothing is ever unpickled. Bodies over the size
limit get 413 before they are read. One measurement runs at a time, since two
at once would disturb each other.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .agent_runtimes import MAX_INPUT_ELEMENTS, Refused, board_runtime, fingerprints, measure_on_board
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol

log = logging.getLogger("profilers.agent")

AGENT_VERSION = 1
DEFAULT_PORT = 8765
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_MODELS = 32
MAX_MANIFEST_BYTES = 1 << 20
INPUTS_HEADER = "X-Hwprune-Inputs"
# protocol field -> (type, lowest, highest) accepted from a request
PROTOCOL_LIMITS = {"warmup_runs": (int, 0, 100_000), "warmup_s": (float, 0.0, 60.0),
                   "min_runs": (int, 1, 100_000), "max_runs": (int, 1, 1_000_000),
                   "max_s": (float, 0.0, 600.0), "target_rel": (float, 0.0, 1.0)}


class BadRequest(Exception):
    """The request is the client's to fix (HTTP 400, or ``status``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _tensors(graph):
    """Every tensor stored in a graph and its subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def check_onnx(data: bytes):
    """Parse and check ONNX bytes; refuse anything else and external data."""
    import onnx
    try:
        model = onnx.load_from_string(data)
        # ONNX Runtime infers undeclared output shapes, the checker wants the field:
        # give it an empty one (this parsed copy is only checked, never run)
        for out in model.graph.output:
            if out.type.HasField("tensor_type") and not out.type.tensor_type.HasField("shape"):
                out.type.tensor_type.shape.SetInParent()
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf decode errors, checker errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BadRequest(f"the body is not a valid ONNX model ({first})") from None
    if not model.graph.node:
        raise BadRequest("the ONNX model has no nodes")
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise BadRequest("ONNX models with external data are refused; embed the weights")
    return model


def make_feeds(model, shapes: dict | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 feeds for the model's inputs; ``shapes`` overrides some."""
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    shapes = shapes or {}
    if not isinstance(shapes, dict):
        raise BadRequest("inputs must be a JSON object {input name: shape}")
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise BadRequest(f"the model has no inputs named {unknown}; its inputs are {names}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = shapes.get(inp.name)
        if dims is None:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        elif not (isinstance(dims, list) and all(type(d) is int and d > 0 for d in dims)):
            raise BadRequest(f"shape of input {inp.name!r} must be a list of positive integers")
        if math.prod(dims) > MAX_INPUT_ELEMENTS:
            raise BadRequest(f"input {inp.name!r} of shape {dims} is too large")
        feeds[inp.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds


def parse_protocol(query: dict[str, list[str]]) -> Protocol:
    kind = query.get("kind", ["layer"])[-1]
    if kind not in ("layer", "model"):
        raise BadRequest(f"kind must be 'layer' or 'model', not {kind!r}")
    proto = LAYER_PROTOCOL if kind == "layer" else MODEL_PROTOCOL
    changes = {}
    for name, (typ, lo, hi) in PROTOCOL_LIMITS.items():
        if name in query:
            try:
                v = typ(query[name][-1])
            except ValueError:
                raise BadRequest(f"{name} must be a number") from None
            if not lo <= v <= hi:  # also refuses nan
                raise BadRequest(f"{name} must be between {lo} and {hi}")
            changes[name] = v
    return replace(proto, **changes)


def split_framed(body: bytes) -> list[tuple[bytes, dict | None]]:
    """The body of /measure_interleaved -> [(onnx bytes, input shapes)]."""
    end = body.find(b"\n", 0, MAX_MANIFEST_BYTES)
    if end < 0:
        raise BadRequest("the body must start with one line of JSON (the manifest)")
    try:
        entries = json.loads(body[:end].decode("utf-8"))["models"]
        sizes = [int(e["bytes"]) for e in entries]
        inputs = [e.get("inputs") for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadRequest('the manifest must be {"models": [{"bytes": n, "inputs": {...}}, ...]}') from None
    if not 1 <= len(sizes) <= MAX_MODELS or min(sizes) <= 0:
        raise BadRequest(f"the manifest must list 1 to {MAX_MODELS} models of positive sizes")
    if sum(sizes) != len(body) - end - 1:
        raise BadRequest(f"the manifest lists {sum(sizes)} bytes of models, "
                         f"the body carries {len(body) - end - 1}")
    out, pos = [], end + 1
    for n, shapes in zip(sizes, inputs):
        out.append((body[pos:pos + n], shapes))
        pos += n
    return out


class AgentServer(ThreadingHTTPServer):
    """Holds the agent's settings; one measurement at a time (``measure_lock``)."""

    daemon_threads = True

    def __init__(self, address, token: str, max_bytes: int, threads: int):
        super().__init__(address, AgentHandler)
        self.token = token
        self.max_bytes = int(max_bytes)
        self.threads = int(threads)
        self.max_threads = max(os.cpu_count() or 1, self.threads)
        self.measure_lock = threading.Lock()

    def runtime(self, threads: int | None = None, name: str = "onnxruntime"):
        """The board's runtime ``name`` (see :mod:`profilers.agent_runtimes`)."""
        return board_runtime(name, threads or self.threads)

    def info(self) -> dict:
        return {"agent": "hwprune-agent", "agent_version": AGENT_VERSION, "threads": self.threads,
                "max_threads": self.max_threads, "max_bytes": self.max_bytes,
                "runtime": self.runtime().fingerprint(), "runtimes": fingerprints(self.threads)}


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"hwprune-agent/{AGENT_VERSION}"
    timeout = 120  # seconds a connection may stay silent

    def log_message(self, format, *args):
        log.info("%s %s", self.address_string(), format % args)

    # --- replies -----------------------------------------------------------
    def _reply(self, status: int, data: dict, unread: int = 0) -> None:
        body = json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="hwprune-agent"')
        if unread:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if unread:
            self._discard(unread)

    def _discard(self, n: int, seconds: float = 5.0) -> None:
        """After an early reply, swallow (never keep) what the client still
        sends, for a few seconds, so that it can read the reply instead of
        seeing the connection reset."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            self.connection.settimeout(1.0)
            while n > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(n, 1 << 16))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass

    def _error(self, status: int, message: str, unread: int = 0) -> None:
        self._reply(status, {"error": message}, unread)

    def _length(self) -> int:
        """The declared body size; -1 when it is not a number."""
        try:
            return int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return -1

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = hmac.compare_digest(value.strip().encode("utf-8"), self.server.token.encode("utf-8"))
        if scheme.lower() == "bearer" and ok:
            return True
        self._error(401, "missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                         "the agent printed at start", unread=max(0, self._length()))
        return False

    # --- endpoints ---------------------------------------------------------
    def do_GET(self):
        if not self._authorised():
            return
        if urlsplit(self.path).path != "/info":
            return self._error(404, f"no endpoint GET {urlsplit(self.path).path}; use /info")
        self._reply(200, self.server.info())

    def do_POST(self):
        if not self._authorised():
            return
        url = urlsplit(self.path)
        if url.path not in ("/measure", "/measure_interleaved"):
            return self._error(404, f"no endpoint POST {url.path}; use /measure or /measure_interleaved",
                               unread=max(0, self._length()))
        if "Content-Length" not in self.headers or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return self._error(411, "send the body with a Content-Length")
        n = self._length()
        if n < 0:
            self.close_connection = True
            return self._error(400, "Content-Length is not a number")
        if n > self.server.max_bytes:
            return self._error(413, f"body of {n} bytes is over the agent's size limit of "
                                    f"{self.server.max_bytes} bytes (start it with a larger --max-upload-mib)",
                               unread=n)
        body = self.rfile.read(n)
        if len(body) != n:
            self.close_connection = True
            return
        try:
            query = parse_qs(url.query)
            protocol = parse_protocol(query)
            threads, name = self._threads(query), query.get("runtime", ["onnxruntime"])[-1]
            if url.path == "/measure":
                shapes = self._header_inputs()
                result = self._measure([(body, shapes)], protocol, threads, name)
                self._reply(200, asdict(result[0]))
            else:
                result = self._measure(split_framed(body), protocol, threads, name)
                self._reply(200, {"timings": [asdict(t) for t in result]})
        except BadRequest as exc:
            self._error(exc.status, str(exc))
        except Exception as exc:  # keep serving; tell the client what went wrong here
            log.exception("measurement failed")
            self._error(500, f"the agent failed: {type(exc).__name__}: {exc}"[:500])

    def _threads(self, query) -> int | None:
        if "threads" not in query:
            return None
        try:
            t = int(query["threads"][-1])
        except ValueError:
            raise BadRequest("threads must be an integer") from None
        if not 1 <= t <= self.server.max_threads:
            raise BadRequest(f"threads must be between 1 and {self.server.max_threads} on this board")
        return t

    def _header_inputs(self):
        text = self.headers.get(INPUTS_HEADER)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise BadRequest(f"{INPUTS_HEADER} must be JSON {{input name: shape}}") from None

    def _measure(self, models, protocol: Protocol, threads: int | None, name: str = "onnxruntime"):
        try:
            runtime = self.server.runtime(threads, name)
            with self.server.measure_lock:  # checking a large model would disturb a measurement too
                return measure_on_board(runtime, name, models, protocol,
                                        lambda data, shapes: make_feeds(check_onnx(data), shapes))
        except Refused as exc:
            raise BadRequest(str(exc)) from None


def new_token() -> str:
    return secrets.token_urlsafe(24)


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, threads: int = 1) -> AgentServer:
    """Bind the agent (port 0 picks a free port; ``server.server_address`` says
    which). Without a token, one is generated (``server.token``)."""
    if int(threads) < 1 or int(max_bytes) < 1:
        raise ValueError("threads and max_bytes must be positive")
    server = AgentServer((host, int(port)), token or new_token(), max_bytes, threads)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the agent accepts connections from the network on %s:%d; anyone holding the token "
                    "can run models on this board, and HTTP is not encrypted", host,
                    server.server_address[1])
    return server


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
          max_bytes: int = DEFAULT_MAX_BYTES, threads: int = 1,
          on_ready: Callable[[AgentServer], None] | None = None) -> None:
    """Serve until interrupted; ``on_ready(server)`` runs once it listens."""
    server = make_server(host, port, token, max_bytes, threads)
    try:
        if on_ready:
            on_ready(server)
        log.info("hwprune agent listening on %s:%d", *server.server_address[:2])
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["AGENT_VERSION", "AgentServer", "BadRequest", "check_onnx", "make_server", "serve", "new_token"]
