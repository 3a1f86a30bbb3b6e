"""``resnet-bottleneck serve``: the classifier behind HTTP, on LitServe (:mod:`resnet_bottleneck.serve`).

Everything ``predict`` takes as ``--weights`` (with ``--model``, ``--runtime``, ``--precision``
exactly as there) is opened once before the server starts, in a separate process, so bad input is
one line and exit status 2 before any port is taken; a port in use is refused the same way.
``--max-delay-ms`` defaults to 0, as Triton's dynamic batching: a batch is what is queued when a
replica takes its first request (under load, the requests that arrived during the previous forward
pass), so one client alone never waits for company (``serve.api.QueuedBatchLoop``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import re
import sys
from pathlib import Path

from ._common import UsageError, add_model_arguments, argument, open_classifier, positive_int


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of megabytes; got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds from 0 to 10000; got {text!r}")
    return value


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1024 <= int(text) <= 65535):  # LitServe's run refuses the others
        raise argparse.ArgumentTypeError(f"must be a port from 1024 to 65535 (LitServe's range); got {text!r}")
    return int(text)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the classifier over HTTP (batched; a page to try it at /)",
        description="POST /predictions/NAME takes an image's bytes (or a multipart form with it in field 'data') "
        "and answers its top classes as JSON, as predict --json ranks them; GET /ping, /v2/health/live, "
        "/v2/health/ready, /v2/models/NAME and /metrics (Prometheus) say how it is; GET / is a page to try "
        "it. Requests are batched by LitServe (--max-batch, --max-delay-ms); --workers runs replicas. "
        "SIGTERM or Ctrl+C stops accepting, answers what is in flight and exits. Needs "
        "pip install 'resnet-bottleneck[serve]'.",
    )
    add_model_arguments(
        parser,
        "serve",
        "what predict takes: a model file, a run directory, torchvision's or timm's weights (with --model), "
        "or an .onnx file with --runtime onnxruntime or openvino",
    )
    parser.add_argument(
        "--name",
        help="the model's name in the URLs, /predictions/NAME (default: the model its file names, else --model, "
        "else the file's name)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="127.0.0.1 (the default: this machine only; localhost means it too), 0.0.0.0 (every IPv4 interface) "
        "or :: (every interface)",
    )
    parser.add_argument("--port", type=_port, default=8080, help="the port (default 8080)")
    parser.add_argument("--max-batch", type=positive_int, default=8, help="images per forward pass at most (default 8)")
    parser.add_argument(
        "--max-delay-ms",
        type=_milliseconds,
        default=0.0,
        help="how long after its first request a batch that is not full waits for more, in milliseconds "
        "(default 0: a batch is what is queued; under load, what arrived during the previous forward pass)",
    )
    parser.add_argument(
        "--max-body-mb", type=_megabytes, default=20.0, help="the largest request body, in megabytes (default 20)"
    )
    parser.add_argument(
        "--topk", type=positive_int, default=5, help="classes per answer unless ?topk= says (default 5)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="model replicas (LitServe's workers per device), each its own process with one API server beside it "
        "(default 1)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from .. import serve
    from ..errors import SettingError
    from ..io.classes import read_labels
    from ..serve.server import check_address

    serve.require()
    if args.host == "localhost":  # LitServe binds addresses, not names
        args.host = "127.0.0.1"
    try:
        if args.name is not None:
            serve.check_name(args.name)
        if args.labels is not None:
            with argument("--labels"):
                read_labels(args.labels)  # a bad labels file is reported before any weights are read
        check_address(args.host, args.port)  # a port in use: one line now, not a traceback after loading
        # the model is opened in a separate process; its bad input comes back as predict words it
        load = functools.partial(open_classifier, args.weights, args.model, args.runtime, args.precision)
        # the name: --name, else the model the file names, else --model, else the file's stem (an .onnx without
        # metadata), made fit for a URL
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.weights.rstrip("/\\")).stem).strip(".-_") or None
        info = serve.describe_model(
            load,
            name=args.name,
            model=args.model or stem,
            labels=args.labels,
            runtime=args.runtime,
            precision=args.precision,
        )
        server = serve.build_server(
            load,
            info,
            max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms,
            max_body_mb=args.max_body_mb,
            topk=args.topk,
            workers=args.workers,
        )
        print(
            f"serving {info.name} ({info.runtime}, {info.num_classes} classes, {info.image_size} pixels) at "
            f"http://{args.host}:{args.port}/ (POST /predictions/{info.name}); SIGTERM or Ctrl+C stops it",
            file=sys.stderr,
            flush=True,
        )
        serve.run_server(server, host=args.host, port=args.port)
    except SettingError as err:
        raise UsageError(f"argument --{err.field.replace('_', '-')}: {err.message}") from None
    # the process ends now: the interpreter's last full collection would walk every object jax, fastapi and
    # pydantic made (seconds on a busy machine, after the server has already stopped); they go with the process
    gc.freeze()
    return 0
