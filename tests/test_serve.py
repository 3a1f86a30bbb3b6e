"""``resnet-bottleneck serve`` over real HTTP on 127.0.0.1: each endpoint, answers equal to ``predict --json``,
32 concurrent clients batched, every hostile request refused without taking the server down, SIGTERM
draining a request in flight, an ``.onnx`` file on ONNX Runtime, and bad flags as one line.

The server runs as ``python -m resnet_bottleneck serve`` in a subprocess (a module-scoped one on a tiny
JAX model, and one on an ``.onnx`` file that the SIGTERM test stops); every request goes to 127.0.0.1,
with a timeout, in bounded numbers.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import one_line_error, random_variables

from resnet_bottleneck import create_model
from resnet_bottleneck.cli import main
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables

HOST = "127.0.0.1"
NAME = "resnet_tiny"
START_DEADLINE = 150  # seconds for a server to load and warm (a loaded 2-core CI machine)
MAX_BODY_MB = 0.2  # small, so the 413 tests send little


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model (resnet_tiny, 10 classes, 32 pixels) as our .safetensors and as .onnx, labels, two images."""
    from PIL import Image

    from resnet_bottleneck.io.onnx import export_onnx

    root = tmp_path_factory.mktemp("serve")
    model = create_model("resnet_tiny", num_classes=10)
    variables = random_variables(model, (1, 32, 32, 3))
    meta = {"model": NAME, "format": CHECKPOINT_FORMAT, "image_size": "32", "num_classes": "10"}
    save_variables(root / "tiny.safetensors", variables, meta)
    export_onnx(model, variables, root / "tiny.onnx")
    (root / "labels.txt").write_text("\n".join(f"class <{i}>" for i in range(10)) + "\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (61, 45, 3), dtype=np.uint8)).save(root / "b.jpg", quality=90)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``resnet-bottleneck serve ARGS`` in a subprocess on a free port, ready (``/v2/health/ready`` 200)."""

    def __init__(self, args, log_dir):
        self.port = free_port()
        self.log = open(log_dir / f"serve-{self.port}.log", "w+b")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "resnet_bottleneck", "serve", *args, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
            start_new_session=True,  # its own process group, as a server started from a terminal
        )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode} before it was ready:\n{self.output()}")
            try:
                if self.get("/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"serve was not ready within {START_DEADLINE} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def request(self, method, path, body=None, headers=None, timeout=30):
        """``(status, headers, body bytes)`` of one request (a fresh connection)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path, timeout=30):
        status, headers, body = self.request("GET", path, timeout=timeout)
        return status, headers, body

    def predict(self, body, path=f"/predictions/{NAME}", headers=None):
        status, _, answer = self.request("POST", path, body=body, headers=headers)
        return status, json.loads(answer)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(files):
    running = Server(
        [
            "--weights",
            str(files / "tiny.safetensors"),
            "--labels",
            str(files / "labels.txt"),
            "--max-batch",
            "8",
            "--max-body-mb",
            str(MAX_BODY_MB),
        ],
        files,
    )
    yield running
    running.stop()


def predict_json(files, capsys, image, *extra):
    """``predict IMAGE --json`` (in this process): ``[(index, label, probability), ...]``."""
    capsys.readouterr()
    assert main(["predict", str(image), "--json", *extra]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    return [(r["class"], r.get("label"), r["probability"]) for r in result["top5"]]


def multipart(field: str, data: bytes, filename: str | None = "image.png") -> tuple[bytes, dict]:
    boundary = "resnetbottleneckboundary"
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def assert_same_as_predict(answer, expected, model=NAME):
    assert answer["model"] == model
    got = [(p["index"], p["label"], p["probability"]) for p in answer["predictions"]]
    assert [g[0] for g in got] == [e[0] for e in expected]  # same classes, same order
    assert [g[1] for g in got] == [e[1] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=2e-6, atol=1e-7)
    assert all(a >= b for a, b in zip([g[2] for g in got], [g[2] for g in got][1:]))


def test_predictions_are_predicts_raw_and_multipart(server, files, capsys):
    """The body as raw bytes (curl --data-binary sends it form-urlencoded: still the image) and as a multipart
    form's ``data``: the top-5 predict --json gives for the same file, labels from --labels."""
    for image in ("a.png", "b.jpg"):
        expected = predict_json(
            files,
            capsys,
            files / image,
            "--weights",
            str(files / "tiny.safetensors"),
            "--labels",
            str(files / "labels.txt"),
        )
        data = (files / image).read_bytes()
        status, answer = server.predict(data, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, answer
        assert_same_as_predict(answer, expected)
        body, headers = multipart("data", data)
        status, answer = server.predict(body, headers=headers)
        assert status == 200, answer
        assert_same_as_predict(answer, expected)


def test_topk(server, files):
    data = (files / "a.png").read_bytes()
    _, full = server.predict(data, path=f"/predictions/{NAME}?topk=10")
    assert len(full["predictions"]) == 10
    assert sorted(p["index"] for p in full["predictions"]) == list(range(10))
    np.testing.assert_allclose(sum(p["probability"] for p in full["predictions"]), 1.0, rtol=1e-5)
    status, three = server.predict(data, path=f"/predictions/{NAME}?topk=3")
    assert status == 200 and three["predictions"] == full["predictions"][:3]
    _, more = server.predict(data, path=f"/predictions/{NAME}?topk=1000")  # more than the classes: all of them
    assert more["predictions"] == full["predictions"]


def test_health_model_metadata_page_and_metrics(server, files):
    status, headers, body = server.get("/ping")
    assert (status, json.loads(body)) == (200, {"status": "Healthy"})
    assert server.get("/v2/health/live")[0] == 200
    status, _, body = server.get("/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})

    status, _, body = server.get(f"/v2/models/{NAME}")
    described = json.loads(body)
    assert status == 200
    assert described["name"] == NAME and described["runtime"] == "jax" and described["precision"] is None
    assert described["input_size"] == [32, 32] and described["classes"] == 10 and described["max_batch_size"] == 8
    assert described["labels"] == [f"class <{i}>" for i in range(10)]

    status, headers, body = server.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert NAME in page and "__MODEL__" not in page

    server.predict((files / "a.png").read_bytes())
    status, headers, body = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in (
        "resnet_bottleneck_requests_total",
        "resnet_bottleneck_request_seconds_bucket",
        "resnet_bottleneck_batch_size_bucket",
        "resnet_bottleneck_queue_depth",
    ):
        assert name in text, name
    assert 'resnet_bottleneck_requests_total{code="200",endpoint="/predictions/{model}"}' in text


def metric(text: str, line_start: str) -> float:
    """The value of the one sample of ``text`` whose line starts with ``line_start``."""
    (value,) = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return value


def test_32_concurrent_clients_are_all_answered_in_batches(server, files):
    """32 clients at once (threads, one request each): all 200 with the right answer, and the batch-size
    histogram (counted in the model worker's process, read through /metrics in the API server's) records
    batches of more than one image."""
    data = (files / "a.png").read_bytes()
    _, alone = server.predict(data)
    before = server.get("/metrics")[2].decode()
    count_before = metric(before, "resnet_bottleneck_batch_size_count")
    ones_before = metric(before, 'resnet_bottleneck_batch_size_bucket{le="1.0"}')
    start = threading.Barrier(32, timeout=30)

    def client(_):
        start.wait()
        return server.predict(data)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(client, range(32)))
    assert [status for status, _ in answers] == [200] * 32
    for _, answer in answers:
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in alone["predictions"]]
        np.testing.assert_allclose(
            [p["probability"] for p in answer["predictions"]],
            [p["probability"] for p in alone["predictions"]],
            rtol=2e-6,
            atol=1e-7,
        )
    after = server.get("/metrics")[2].decode()
    batches = metric(after, "resnet_bottleneck_batch_size_count") - count_before
    images = metric(after, "resnet_bottleneck_batch_size_sum") - metric(before, "resnet_bottleneck_batch_size_sum")
    ones = metric(after, 'resnet_bottleneck_batch_size_bucket{le="1.0"}') - ones_before
    assert images == 32
    assert ones < batches < 32, (ones, batches)  # some batch held more than one image


def bomb_png(width=30000, height=30000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels (900 megapixels), a few hundred bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def chunked_post(port, path, total: int, piece: int = 16384):
    """POST ``total`` bytes with ``Transfer-Encoding: chunked`` (no Content-Length): the status, or the
    connection's end if the server refused before reading it all."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        sent = 0
        try:
            while sent < total:
                connection.send(b"%x\r\n" % piece + b"\0" * piece + b"\r\n")
                sent += piece
            connection.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered 413 and closed while we were still sending
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


LIMIT = int(MAX_BODY_MB * 1_000_000)

BAD_REQUESTS = [
    # (id, method, path, body, headers, expected status, a fragment of the error)
    ("not-an-image", "POST", f"/predictions/{NAME}", b"this is text, not an image", {}, 400, "cannot read"),
    ("a-local-path", "POST", f"/predictions/{NAME}", b"/etc/passwd", {}, 400, "cannot read"),
    (
        "a-url",
        "POST",
        f"/predictions/{NAME}",
        b"file:///etc/passwd",
        {"Content-Type": "text/plain"},
        400,
        "cannot read",
    ),
    ("empty", "POST", f"/predictions/{NAME}", b"", {}, 400, "no image"),
    ("truncated-png", "POST", f"/predictions/{NAME}", "TRUNCATED", {}, 400, "cannot"),
    ("bomb", "POST", f"/predictions/{NAME}", bomb_png(), {}, 400, "pixels"),
    ("form-without-data", "POST", f"/predictions/{NAME}", ("file", b"x"), None, 400, "'data'"),
    ("form-data-as-text", "POST", f"/predictions/{NAME}", ("data", b"/etc/passwd", None), None, 400, "not text"),
    (
        "broken-form",
        "POST",
        f"/predictions/{NAME}",
        b"--x\r\nnonsense",
        {"Content-Type": "multipart/form-data"},
        400,
        "form",
    ),
    ("too-large", "POST", f"/predictions/{NAME}", b"\0" * (LIMIT + 1), {}, 413, "limit"),
    ("lying-length", "POST", f"/predictions/{NAME}", b"", {"Content-Length": str(10 * LIMIT)}, 413, "limit"),
    ("unknown-model", "POST", "/predictions/resnet9000", "IMAGE", {}, 404, "resnet9000"),
    ("unknown-model-metadata", "GET", "/v2/models/resnet9000", None, {}, 404, "resnet9000"),
    ("unknown-path", "GET", "/nowhere", None, {}, 404, "Not Found"),
    ("get-predictions", "GET", f"/predictions/{NAME}", None, {}, 405, "Method Not Allowed"),
    ("delete-ping", "DELETE", "/ping", None, {}, 405, "Method Not Allowed"),
    ("topk-zero", "POST", f"/predictions/{NAME}?topk=0", "IMAGE", {}, 400, "topk"),
    ("topk-negative", "POST", f"/predictions/{NAME}?topk=-2", "IMAGE", {}, 400, "topk"),
    ("topk-text", "POST", f"/predictions/{NAME}?topk=five", "IMAGE", {}, 400, "topk"),
    ("topk-fraction", "POST", f"/predictions/{NAME}?topk=1.5", "IMAGE", {}, 400, "topk"),
    ("topk-5000-digits", "POST", f"/predictions/{NAME}?topk={'9' * 5000}", "IMAGE", {}, 400, "topk"),
    ("length-of-19-digits", "POST", f"/predictions/{NAME}", b"", {"Content-Length": "9" * 19}, 413, "limit"),
]


@pytest.mark.parametrize(
    "method, path, body, headers, status, fragment", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_is_refused_and_the_server_stays_ready(
    server, files, method, path, body, headers, status, fragment
):
    image = (files / "a.png").read_bytes()
    if body == "IMAGE":
        body = image
    elif body == "TRUNCATED":
        body = image[: len(image) // 2]
    elif isinstance(body, tuple):
        body, headers = multipart(*body)
    if headers.get("Content-Length") and not body:  # declares ten times the limit, sends nothing
        connection = http.client.HTTPConnection(HOST, server.port, timeout=30)
        connection.putrequest(method, path)
        connection.putheader("Content-Length", headers["Content-Length"])
        connection.endheaders()
        response = connection.getresponse()
        got, answer = response.status, response.read()
        connection.close()
    else:
        got, _, answer = server.request(method, path, body=body, headers=headers)
    assert got == status, answer
    message = json.loads(answer)["error"]
    assert fragment in message, message
    assert server.get("/v2/health/ready")[0] == 200
    ok, answer = server.predict(image)
    assert ok == 200 and len(answer["predictions"]) == 5


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(server, files):
    """No Content-Length to check: the bytes are counted as they arrive, and 413 comes once they pass the limit."""
    status, answer = chunked_post(server.port, f"/predictions/{NAME}", total=4 * LIMIT)
    assert status == 413 and "limit" in answer["error"]
    assert server.get("/v2/health/ready")[0] == 200
    assert server.predict((files / "a.png").read_bytes())[0] == 200


def test_a_client_gone_mid_upload_is_no_error_and_the_server_stays_ready(server, files):
    """Headers and part of the body, then the connection closed: nothing for the log's tracebacks, still ready."""
    before = server.output().count("Traceback")
    for _ in range(3):
        connection = http.client.HTTPConnection(HOST, server.port, timeout=30)
        connection.putrequest("POST", f"/predictions/{NAME}")
        connection.putheader("Content-Length", "100000")
        connection.endheaders()
        connection.send(b"\0" * 1000)
        connection.close()
    image = (files / "a.png").read_bytes()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.get("/v2/health/ready")[0] != 200:
        time.sleep(0.1)
    ok, answer = server.predict(image)
    assert ok == 200 and len(answer["predictions"]) == 5
    assert server.output().count("Traceback") == before, server.output()


def test_onnx_on_onnxruntime_then_sigterm_drains_the_request_in_flight(files, capsys):
    """An .onnx file on ONNX Runtime answers what predict --runtime onnxruntime answers. Then SIGTERM while a
    request is in flight (its headers and half its body sent): the server stops accepting (a new connection
    is refused), answers that request once its body is complete, and exits 0 within 10 s. With --max-batch 1
    (LitServe then hands the model one request, not a list)."""
    onnx = files / "tiny.onnx"
    running = Server(
        ["--weights", str(onnx), "--runtime", "onnxruntime", "--name", "tiny-onnx", "--max-batch", "1"], files
    )
    try:
        expected = predict_json(files, capsys, files / "a.png", "--weights", str(onnx), "--runtime", "onnxruntime")
        data = (files / "a.png").read_bytes()
        status, answer = running.predict(data, path="/predictions/tiny-onnx")
        assert status == 200, answer
        assert_same_as_predict(answer, [(i, str(i), p) for i, _, p in expected], model="tiny-onnx")
        status, _, body = running.get("/v2/models/tiny-onnx")
        assert status == 200 and json.loads(body)["runtime"] == "onnxruntime"
        assert json.loads(body)["max_batch_size"] == 1

        answer, stopped_at = stop_with_a_request_in_flight(
            running, "/predictions/tiny-onnx", data, lambda: running.process.send_signal(signal.SIGTERM)
        )
        assert [p["index"] for p in answer["predictions"]] == [e[0] for e in expected]
        assert running.process.wait(timeout=max(0.1, stopped_at + 10 - time.monotonic())) == 0, running.output()
        assert time.monotonic() - stopped_at < 10
        assert "Traceback" not in running.output(), running.output()
    finally:
        running.stop()


def test_ctrl_c_to_the_process_group_drains_two_replicas(files):
    """Ctrl+C at a terminal signals every process of the group (the model workers, LitServe's manager, the API
    servers, the main process): still the request in flight is answered and the server exits 0 within 10 s.
    Two replicas (--workers 2: two model workers, two API servers sharing the port); an .onnx file without a
    model name is served under its file's name."""
    running = Server(["--weights", str(files / "tiny.onnx"), "--runtime", "onnxruntime", "--workers", "2"], files)
    try:
        data = (files / "a.png").read_bytes()
        answers = [running.predict(data, path="/predictions/tiny") for _ in range(4)]
        assert [status for status, _ in answers] == [200] * 4
        group = os.getpgid(running.process.pid)
        assert group != os.getpgid(0)  # its own group: the signal reaches the server's processes only
        answer, stopped_at = stop_with_a_request_in_flight(
            running, "/predictions/tiny", data, lambda: os.killpg(group, signal.SIGINT)
        )
        assert answer["predictions"] == answers[0][1]["predictions"]
        assert running.process.wait(timeout=max(0.1, stopped_at + 10 - time.monotonic())) == 0, running.output()
        assert "Traceback" not in running.output(), running.output()
    finally:
        running.stop()


def stop_with_a_request_in_flight(running, path, data, stop):
    """Send a request's headers and half its body, ``stop()`` the server, wait until new connections are refused,
    send the rest: ``(its JSON answer, the time of the stop)``; the answer must be a 200."""
    in_flight = socket.create_connection((HOST, running.port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    in_flight.sendall(head + data[: len(data) // 2])
    time.sleep(0.5)  # uvicorn accepts the connection and reads the headers (nothing to poll): now in flight
    stopped_at = time.monotonic()
    stop()
    deadline = stopped_at + 8
    while True:  # poll until new connections are refused
        try:
            socket.create_connection((HOST, running.port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the server still accepts connections after the signal"
        time.sleep(0.05)
    in_flight.sendall(data[len(data) // 2 :])
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
        piece = in_flight.recv(65536)
        if not piece:
            break
        reply += piece
    in_flight.close()
    status_line, rest = reply.split(b"\r\n", 1)
    assert b" 200 " in status_line, reply
    return json.loads(rest.split(b"\r\n\r\n", 1)[1]), stopped_at


def _length(reply: bytes) -> int:
    head = reply.split(b"\r\n\r\n", 1)[0].decode().lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 1 << 30


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--host", "10.1.2.3"], "argument --host: must be one of 127.0.0.1, 0.0.0.0, ::"),
        (["--port", "80"], "argument --port: must be a port from 1024 to 65535 (LitServe's range); got '80'"),
        (["--port", "65536"], "argument --port: must be a port from 1024 to 65535 (LitServe's range); got '65536'"),
        (["--max-body-mb", "0"], "argument --max-body-mb: must be a positive number of megabytes; got '0'"),
        (["--max-delay-ms", "-1"], "argument --max-delay-ms: must be a number of milliseconds"),
        (["--max-batch", "0"], "argument --max-batch: must be a positive integer"),
        (["--name", "a/b"], "argument --name: must be letters, digits"),
        (["--runtime", "onnxruntime", "--precision", "bf16"], "argument --precision: bf16 runs on OpenVINO"),
    ],
)
def test_bad_flags_are_one_line_before_serving(files, capsys, args, fragment):
    assert main(["serve", "--weights", str(files / "tiny.safetensors"), *args]) == 2
    one_line_error(capsys.readouterr().err, fragment, prog="resnet-bottleneck serve")


def test_a_port_in_use_and_missing_weights_are_one_line(files, capsys):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--weights", str(files / "tiny.safetensors"), "--port", str(port)]) == 2
        one_line_error(capsys.readouterr().err, f"argument --port: {HOST}:{port} is not free")
    assert main(["serve", "--weights", str(files / "nowhere.safetensors"), "--port", str(free_port())]) == 2
    one_line_error(capsys.readouterr().err, "argument --weights:", "nowhere.safetensors")


def test_without_the_serve_extra_says_what_to_install(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "litserve", None)
    assert main(["serve", "--weights", str(files / "tiny.safetensors")]) == 2
    one_line_error(capsys.readouterr().err, "litserve", "pip install 'resnet-bottleneck[serve]'")


def test_ready_needs_every_worker_loaded_and_warmed():
    """/v2/health/ready's verdict on LitServe's worker states (setup, which loads and warms, sets READY)."""
    from litserve.utils import WorkerSetupStatus

    from resnet_bottleneck.serve.server import ready

    assert not ready(None) and not ready({})
    assert not ready({"predictions_0": WorkerSetupStatus.STARTING})
    assert not ready({"predictions_0": WorkerSetupStatus.READY, "predictions_1": WorkerSetupStatus.STARTING})
    assert ready({"predictions_0": WorkerSetupStatus.READY, "predictions_1": WorkerSetupStatus.READY})


def test_importing_the_serve_package_imports_no_server():
    code = (
        "import resnet_bottleneck.serve, sys; "
        "print([m for m in ('litserve', 'fastapi', 'prometheus_client') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_a_batch_is_what_is_queued_without_waiting_for_company():
    """serve.api.QueuedBatchLoop: a batch takes what is queued, up to max_batch, and (delay 0) waits for nothing
    more; with a delay it also takes what arrives within it; an idle worker returns empty; the stop sentinel
    stops; a request past LitServe's timeout is reported as timed out, not run."""
    import queue
    import threading
    from types import SimpleNamespace

    from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

    from resnet_bottleneck.serve.api import QueuedBatchLoop

    loop = QueuedBatchLoop()
    loop.IDLE = 0.05
    started = []
    loop.put_response = lambda **kw: started.append(kw["uid"])
    api = SimpleNamespace(max_batch_size=3, batch_timeout=0.0, request_timeout=30)
    q = queue.Queue()

    def request(uid, age=0.0):
        q.put(("queue", uid, time.monotonic() - age, f"x{uid}"))

    assert loop.get_batch_requests(api, q, None) == ([], [])  # idle: nothing, after IDLE
    for uid in range(5):
        request(uid)
    t = time.monotonic()
    payloads, timed_out = loop.get_batch_requests(api, q, None)
    assert [p[1] for p in payloads] == [0, 1, 2] and timed_out == [] and started == [0, 1, 2]
    payloads, _ = loop.get_batch_requests(api, q, None)
    assert [p[1] for p in payloads] == [3, 4] and time.monotonic() - t < 0.5  # no waiting for a third
    request(5, age=60)  # queued longer than the request timeout
    request(6)
    assert loop.get_batch_requests(api, q, None) == ([("queue", 6, "x6")], [("queue", 5)])

    api.batch_timeout = 2.0  # a delay: what arrives within it joins, until the batch is full
    request(7)
    threading.Timer(0.1, request, (8,)).start()
    threading.Timer(0.2, request, (9,)).start()
    payloads, _ = loop.get_batch_requests(api, q, None)
    assert [p[1] for p in payloads] == [7, 8, 9]
    q.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        loop.get_batch_requests(api, q, None)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0, -1, "20", True])
def test_build_server_refuses_a_body_limit_that_is_not_a_finite_positive_number(value):
    """The Python API checks what the command line's --max-body-mb checks (infinity would overflow the byte count)."""
    from resnet_bottleneck.errors import SettingError
    from resnet_bottleneck.serve import build_server

    with pytest.raises(SettingError, match="max_body_mb: must be a finite positive number of megabytes"):
        build_server(None, None, max_body_mb=value)
