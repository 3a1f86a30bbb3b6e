"""Serving: ResNet-50 behind ``resnet-bottleneck serve`` against the same runtime in-process (issue 27).

One model file (random weights; int8 on OpenVINO by default, the fastest CPU runtime we ship: the
``deploy`` section), timed two ways, rounds interleaved, medians:

* offline, in this process: the public functions ``predict`` runs, on JPEG bytes in memory:
  :func:`~resnet_bottleneck.data.eval_transform` (decode, resize, crop) and
  :func:`~resnet_bottleneck.inference.onnx_classifier` (normalise, model, softmax), then the top 5;
  (a) images/s on batches of ``--batch`` images, (c) the time of one image;
* served: ``resnet-bottleneck serve`` started as a subprocess on a free loopback port (``--max-batch
  --batch``, ``--max-delay-ms``, one worker), each JPEG's bytes posted to ``POST /predictions/{model}``
  by closed-loop clients (threads of this process, ``http.client``): (b) images/s with ``--clients``
  concurrent clients, (d) the median latency of one client.

The server is stopped (SIGTERM; its process group killed if it has not exited in 20 s) after each round,
and before the offline part of the next, so that neither side's threads run during the other's turn;
the targets (issue 27): (b) >= 0.8x (a), (d) <= 1.25x (c). The load generator shares the machine's cores
with the server, as a client on the same host does.

    python benchmarks/bench_serve.py [--runtime openvino] [--precision int8] [--clients 16] [--batch 8]
        [--rounds 5] [--seconds 20] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import BENCHMARKS_MD, SYSTEM_MALLOC, cores, interleaved, write_section  # noqa: E402
from bench_deploy import calibration_images, random_variables  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402

THROUGHPUT_TARGET, LATENCY_TARGET = 0.8, 1.25
OFFLINE_BATCH, OFFLINE_ONE = "offline batch", "offline single image"
READY_TIMEOUT_S, STOP_TIMEOUT_S = 300.0, 20.0


def jpegs(count: int, size: int, seed: int = 0) -> list[bytes]:
    """``count`` photo-like ``size`` x ``size`` JPEGs (smooth colour fields plus noise), quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        waves = [np.sin(xx * rng.uniform(1, 6) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(1, 6)) for _ in "rgb"]
        pixels = 128 + 100 * np.stack(waves, -1) + rng.normal(0, 12, (size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def model_file(name: str, size: int, precision: str, calibration: int, folder: Path) -> Path:
    """``name`` on random weights (``bench_deploy``'s) as an ``.onnx`` file at ``size``: float32, or int8
    calibrated on ``calibration`` random images (as ``export --int8`` writes it)."""
    from resnet_bottleneck.data import ImageArrays
    from resnet_bottleneck.io.onnx import export_onnx
    from resnet_bottleneck.io.quantize import quantize_onnx

    model = rb.create_model(name)
    path = export_onnx(
        model, random_variables(model, size), folder / "float32.onnx", image_size=size, metadata={"model": name}
    )
    if precision == "float32":
        return path
    images = calibration_images(calibration, size)
    source = ImageArrays(images, np.zeros(len(images), np.int32), ("",))
    return quantize_onnx(path, folder / "int8.onnx", source, images=len(images)).path


def offline(path: Path, runtime: str):
    """``probabilities(list of JPEG bytes) -> [N, classes]``: what ``predict`` does to each image (decode,
    resize, crop, normalise, model, softmax), in this process."""
    from resnet_bottleneck.data import eval_transform
    from resnet_bottleneck.inference import onnx_classifier
    from resnet_bottleneck.io.onnx import load_onnx

    classifier = load_onnx(path, runtime=runtime, threads=cores())
    classify = onnx_classifier(classifier)
    crop = (classifier.crop_pct, classifier.interpolation)

    def probabilities(images: list[bytes]) -> np.ndarray:
        return classify(np.stack([eval_transform(io.BytesIO(b), classifier.image_size, *crop) for b in images]))

    return probabilities


def top5(probabilities: np.ndarray) -> list[list[tuple[int, float]]]:
    """Each row's five most probable classes, ``(index, probability)``, most probable first."""
    best = np.argsort(-probabilities, axis=1)[:, :5]
    return [[(int(i), float(p[i])) for i in row] for p, row in zip(probabilities, best, strict=True)]


# --- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``resnet-bottleneck serve`` on a free loopback port, in its own process group; a context manager that
    waits for ``/v2/health/ready`` (``startup_s``) and always stops it: SIGTERM, then the group's SIGKILL.

    Its own process group, but this process's session: where the kernel groups CPU time by session
    (``sched_autogroup``), a new session would give the server a share of a busy machine of its own, beside
    the one the offline part gets."""

    def __init__(self, path: Path, runtime: str, batch: int, delay_ms: float, log: Path):
        self.port = free_port()
        self.command = [
            sys.executable,
            "-m",
            "resnet_bottleneck",
            "serve",
            "--weights",
            str(path),
            "--runtime",
            runtime,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-batch",
            str(batch),
            "--max-delay-ms",
            str(delay_ms),
            "--workers",
            "1",
        ]
        self.log, self.process, self.startup_s, self.killed = log, None, None, False

    def __enter__(self) -> Server:
        start = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        try:
            while not self._ready():
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with status {self.process.returncode}: {self.tail()}")
                if time.monotonic() - start > READY_TIMEOUT_S:
                    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S:.0f} s: {self.tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - start
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ready(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/v2/health/ready")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def memory_mib(self) -> float:
        """The resident memory of the server's process group (every process it started), MiB."""
        total = 0
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == self.process.pid:
                    status = (proc / "status").read_text().splitlines()
                    total += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            except (OSError, ValueError, IndexError):  # gone meanwhile, or a kernel thread's status
                pass
        return total / 1024

    def stop(self) -> None:
        """SIGTERM; whatever of its process group is left after ``STOP_TIMEOUT_S`` is killed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.killed = True
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its workers, if the main process left any behind
            self.killed = self.killed or self.process.poll() is None
        except ProcessLookupError:
            pass
        self.process.wait()


# --- the clients --------------------------------------------------------------------------


class Client:
    """One keep-alive connection posting JPEG bytes to ``/predictions/{model}``; ``post()`` -> its seconds."""

    def __init__(self, port: int, model: str, images: list[bytes], first: int = 0):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.path, self.images, self.next = f"/predictions/{model}", images, first

    def answer(self, image: bytes) -> dict:
        self.connection.request("POST", self.path, body=image, headers={"Content-Type": "image/jpeg"})
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {self.path} answered {response.status}: {body[:300]!r}")
        return json.loads(body)

    def post(self) -> float:
        image = self.images[self.next % len(self.images)]
        self.next += 1
        start = time.perf_counter()
        self.answer(image)
        return time.perf_counter() - start


def one_client(port: int, model: str, images: list[bytes], count: int, seconds: float, warmup: int = 3) -> float:
    """The median seconds of ``count`` requests (fewer if ``seconds`` run out) from one client."""
    client = Client(port, model, images)
    for _ in range(warmup):
        client.post()
    times, end = [], time.monotonic() + seconds
    while len(times) < count and (len(times) < 3 or time.monotonic() < end):
        times.append(client.post())
    return statistics.median(times)


def concurrent(port: int, model: str, images: list[bytes], clients: int, seconds: float, warmup_s: float) -> float:
    """Images/s answered to ``clients`` closed-loop clients over ``seconds``, after ``warmup_s`` of the same load
    (the answers that end inside the window count). Any failed request fails the run."""
    start = time.monotonic()
    window = (start + warmup_s, start + warmup_s + seconds)
    counts, errors = [0] * clients, []

    def run(k: int) -> None:
        client = Client(port, model, images, first=k)
        try:
            while time.monotonic() < window[1]:
                client.post()
                if window[0] <= time.monotonic() < window[1]:
                    counts[k] += 1
        except Exception as err:  # noqa: BLE001 - reported below, with the others
            errors.append(f"client {k}: {err}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed; the first: {errors[0]}")
    return sum(counts) / seconds


def agreement(served: dict, expected: np.ndarray) -> float:
    """The largest |difference| between the probabilities the server answers (its top 5) and the offline
    ones (``expected``, every class's) of the same classes."""
    return max(abs(p["probability"] - float(expected[p["index"]])) for p in served["predictions"])


# --- the report ---------------------------------------------------------------------------


def table(figures: dict, batch: int, clients: int) -> list[str]:
    """(a) against (b) and (c) against (d): the figures, their ratios and the targets."""
    a, b = figures["offline_images_s"], figures["served_images_s"]
    c, d = figures["offline_single_s"], figures["served_latency_s"]
    return [
        "| measure | offline, in-process | served, `resnet-bottleneck serve` | served / offline | target |",
        "|---|---|---|---|---|",
        f"| images/s (offline: batches of {batch}; served: {clients} clients) | {a:.1f} | {b:.1f} | "
        f"**{b / a:.2f}x** | >= {THROUGHPUT_TARGET}x |",
        f"| one image (offline: decode, transform, model; served: median latency, 1 client) | {c * 1e3:.1f} ms | "
        f"{d * 1e3:.1f} ms | **{d / c:.2f}x** | <= {LATENCY_TARGET}x |",
    ]


def ratios(figures: dict) -> tuple[float, float]:
    """Served images/s over offline images/s; served latency over the offline single-image time."""
    return (
        figures["served_images_s"] / figures["offline_images_s"],
        figures["served_latency_s"] / figures["offline_single_s"],
    )


def verdicts(figures: dict, clients: int, rounds: list[dict] = ()) -> list[str]:
    """The two targets of issue 27, read off the medians (and each round's own ratios shown, where given)."""
    throughput, latency = ratios(figures)
    each = [ratios(f) for f in rounds]

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def shown(k: int) -> str:
        return f"; round by round {', '.join(f'{r[k]:.2f}x' for r in each)}" if len(each) > 1 else ""

    return [
        f"- Served images/s with {clients} clients >= {THROUGHPUT_TARGET}x offline: "
        f"{met(throughput >= THROUGHPUT_TARGET)} ({throughput:.2f}x{shown(0)}).",
        f"- Served median latency at one client <= {LATENCY_TARGET}x the offline single-image time: "
        f"{met(latency <= LATENCY_TARGET)} ({latency:.2f}x{shown(1)}).",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("openvino", "onnxruntime"), default="openvino")
    parser.add_argument(
        "--precision", choices=("int8", "float32"), default="int8", help="the model file: int8 (QDQ) or float32"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the served images/s")
    parser.add_argument("--batch", type=int, default=8, help="the server's --max-batch and the offline batch")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="the server's --max-delay-ms (its default, 0)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the server restarted in each)")
    parser.add_argument("--seconds", type=float, default=20.0, help="the timed window of each concurrent run")
    parser.add_argument("--requests", type=int, default=40, help="one client's timed requests a round")
    parser.add_argument("--repeats", type=int, default=5, help="offline rounds of interleaved calls a round")
    parser.add_argument("--calibration-images", type=int, default=64, help="random images the int8 file calibrates on")
    parser.add_argument("--quick", action="store_true", help="toy sizes (resnet18 at 32x32), one round; writes nothing")
    parser.add_argument("--write", action="store_true", help="rewrite the serve section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--quick is a smoke test; it does not --write")
    for flag in ("clients", "batch", "rounds", "requests", "repeats", "calibration_images"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1; got {getattr(args, flag)}")
    if args.seconds <= 0 or args.max_delay_ms < 0:
        parser.error("--seconds must be positive and --max-delay-ms at least 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark stops its server too (finally)
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    start_load = ", ".join(f"{a:.2f}" for a in os.getloadavg())

    name, size, rounds, seconds, warmup_s = "resnet50", 224, args.rounds, args.seconds, 3.0
    requests, repeats, calibration = args.requests, args.repeats, args.calibration_images
    if args.quick:
        name, size, rounds, seconds, warmup_s, requests, repeats, calibration = "resnet18", 32, 1, 2.0, 0.5, 5, 1, 4
    images = jpegs(max(args.batch, 8), size)
    per_round = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = model_file(name, size, args.precision, calibration, folder)
        probabilities = offline(path, args.runtime)
        expected = probabilities(images[:1])[0]
        batch = [images[k % len(images)] for k in range(args.batch)]
        runners = {
            OFFLINE_BATCH: lambda: top5(probabilities(batch)),
            OFFLINE_ONE: lambda: top5(probabilities(images[:1])),
        }
        for r in range(rounds):
            seconds_per_call = interleaved(runners, repeats, {OFFLINE_BATCH: 1, OFFLINE_ONE: 2})
            with Server(path, args.runtime, args.batch, args.max_delay_ms, folder / "server.log") as server:
                error = agreement(Client(server.port, name, images).answer(images[0]), expected)
                latency = one_client(server.port, name, images, requests, seconds)
                served = concurrent(server.port, name, images, args.clients, seconds, warmup_s)
                memory = server.memory_mib()
            figures = {
                "offline_images_s": args.batch / seconds_per_call[OFFLINE_BATCH],
                "offline_single_s": seconds_per_call[OFFLINE_ONE],
                "served_images_s": served,
                "served_latency_s": latency,
                "startup_s": server.startup_s,
                "server_mib": memory,
                "agreement": error,
            }
            per_round.append(figures)
            print(f"round {r + 1}: " + json.dumps({k: round(v, 4) for k, v in figures.items()}), flush=True)
            if server.killed:
                print("the server did not exit within 20 s of SIGTERM: killed", flush=True)
    figures = {key: statistics.median(f[key] for f in per_round) for key in per_round[0]}
    worst = max(f["agreement"] for f in per_round)
    lines = [
        *table(figures, args.batch, args.clients),
        "",
        *verdicts(figures, args.clients, per_round),
        f"- The server: ready {figures['startup_s']:.1f} s after its start (median), {figures['server_mib']:.0f} MiB "
        f"resident after the runs; its top 5 differ from the offline ones by at most {worst:.1e} in probability.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        import onnxruntime

        from resnet_bottleneck.io.onnx import openvino_version

        load = ", ".join(f"{a:.2f}" for a in os.getloadavg())
        versions = {
            "openvino": f"OpenVINO {openvino_version()}",
            "onnxruntime": f"ONNX Runtime {onnxruntime.__version__}",
        }
        runtime = f"{args.precision} on {versions[args.runtime]}"
        write_section(
            "serve",
            f"Serve: ResNet-50 behind `resnet-bottleneck serve` against in-process inference ({args.precision}, "
            f"{args.runtime})",
            text,
            reused_memory=reused,
            note=f" (medians of {rounds} interleaved rounds, the server restarted in each; {runtime}; "
            f"{cores()} threads on each side; the clients, threads of the benchmark's process, share those cores; "
            f"load average at the start {start_load}, at the end {load}, this run's own threads included)",
            text=f"Random weights, {size}-pixel JPEGs (quality 90) in memory. Offline runs the transform and model "
            f"`predict` runs, in this process; served posts each JPEG's bytes to `POST /predictions/{{model}}` of "
            f"`resnet-bottleneck serve --max-batch {args.batch} --max-delay-ms {args.max_delay_ms:g} --workers 1` "
            f"on 127.0.0.1.",
        )


if __name__ == "__main__":
    assert BENCHMARKS_MD.exists()
    main()
