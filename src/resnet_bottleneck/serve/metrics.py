"""The server's Prometheus metrics, counted across its processes.

LitServe answers HTTP in one or more API-server processes and runs the model in separate worker
processes, so no one process sees every request and every batch. prometheus_client's multiprocess mode
joins them: each process writes its counts to memory-mapped files in one folder
(``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary folder that :func:`multiprocess_folder` sets for the
serve run only, never on import) and ``GET /metrics`` sums the files. The queue depth is read at
scrape time from LitServe's request queue (a multiprocessing manager's queue, the same from every
process).

- ``resnet_bottleneck_requests_total{endpoint, code}``: requests answered, by route and status code.
- ``resnet_bottleneck_request_seconds{endpoint}``: time from the request's arrival to its response.
- ``resnet_bottleneck_batch_size``: requests per batch a model worker took (one forward pass for the images
  among them that decoded), as the dynamic batching formed them.
- ``resnet_bottleneck_queue_depth``: requests waiting for a worker now.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager

#: The environment variable prometheus_client's multiprocess mode reads.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Latency buckets, seconds (a 224-pixel ResNet-50 on a CPU: tens to hundreds of milliseconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)

_metrics: dict = {}


@contextmanager
def multiprocess_folder():
    """A fresh folder for the processes' metric files, named in ``PROMETHEUS_MULTIPROC_DIR`` while the server
    runs (its processes are started inside and inherit it), then removed and the variable restored."""
    from prometheus_client import values

    folder = tempfile.mkdtemp(prefix="resnet-bottleneck-metrics-")
    before, value_class = os.environ.get(MULTIPROC_VARIABLE), values.ValueClass
    os.environ[MULTIPROC_VARIABLE] = folder
    # prometheus_client picks its value class when first imported: where this process imported it before the
    # folder was set, switch it (only metrics made afterwards use it; ours are made lazily, in the children)
    if getattr(value_class, "__name__", "") != "MmapedValue":
        values.ValueClass = values.MultiProcessValue()
    try:
        yield folder
    finally:
        values.ValueClass = value_class
        if before is None:
            os.environ.pop(MULTIPROC_VARIABLE, None)
        else:
            os.environ[MULTIPROC_VARIABLE] = before
        shutil.rmtree(folder, ignore_errors=True)


def _registry():
    if "registry" not in _metrics:
        from prometheus_client import CollectorRegistry

        _metrics["registry"] = CollectorRegistry()  # ours alone; in multiprocess mode the files are what counts
    return _metrics["registry"]


def http_metrics() -> dict:
    """This process's request counter and latency histogram (``requests``, ``latency``), made on first use:
    after :func:`multiprocess_folder` has set the folder, in whichever API-server process answers."""
    if "requests" not in _metrics:
        from prometheus_client import Counter, Histogram

        _metrics["requests"] = Counter(
            "resnet_bottleneck_requests",
            "HTTP requests answered, by route and status code",
            ["endpoint", "code"],
            registry=_registry(),
        )
        _metrics["latency"] = Histogram(
            "resnet_bottleneck_request_seconds",
            "Seconds from a request's arrival to its response, by route",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=_registry(),
        )
    return _metrics


def batch_histogram(max_batch: int):
    """This process's batch-size histogram (made on first use, in the model worker that runs the batches)."""
    if "batch" not in _metrics:
        from prometheus_client import Histogram

        _metrics["batch"] = Histogram(
            "resnet_bottleneck_batch_size",
            "Requests per batch a model worker took (one forward pass for those that decoded)",
            buckets=batch_buckets(max_batch),
            registry=_registry(),
        )
    return _metrics["batch"]


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Every size up to 8, then powers of two, up to ``max_batch``: the histogram tells 1 from 2 from 3."""
    sizes = set(range(1, min(max_batch, 8) + 1))
    size = 16
    while size < max_batch:
        sizes.add(size)
        size *= 2
    sizes.add(max_batch)
    return tuple(float(s) for s in sorted(sizes))


def exposition(queue_depth: int | None) -> tuple[bytes, str]:
    """``(body, content type)`` of ``GET /metrics``: every process's counts (the multiprocess files where the
    folder is set, else this process's own) and ``queue_depth``, the requests waiting now."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROC_VARIABLE):
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = _registry()
    now = CollectorRegistry()  # read at scrape time from the shared queue: no per-process file (no Gauge)
    now.register(_QueueDepth(queue_depth))
    return generate_latest(counted) + generate_latest(now), CONTENT_TYPE_LATEST


class _QueueDepth:
    """A collector of one gauge, the queue depth read at scrape time."""

    def __init__(self, depth: int | None):
        self.depth = depth

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "resnet_bottleneck_queue_depth", "Requests waiting for a model worker (LitServe's request queue)"
        )
        if self.depth is not None:
            gauge.add_metric([], self.depth)
        yield gauge


class MetricsMiddleware:
    """Pure ASGI middleware: each HTTP request's status code and latency, labelled by its route's template
    (``/predictions/{model}``; ``unmatched`` for a path no route has, so the labels stay few)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            found = http_metrics()
            found["requests"].labels(endpoint, str(status[0])).inc()
            found["latency"].labels(endpoint).observe(time.perf_counter() - start)
