"""An image classifier behind HTTP, on LitServe: ``resnet-bottleneck serve`` as library calls.

- :func:`describe_model`: what a classifier is (classes, labels, input size, transform), read in a
  separate process so the server's own process never initialises JAX before it forks.
- :func:`build_server`: the LitServer: ``POST /predictions/{model}`` batched by LitServe
  (``max_batch``, ``max_delay_ms``), ``GET /ping``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{model}``, ``/metrics`` (Prometheus) and the page at ``/``.
- :func:`run_server`: serve it until SIGTERM or Ctrl+C, which drain what is in flight and exit.

Needs the ``serve`` extra (``pip install 'resnet-bottleneck[serve]'``: LitServe, python-multipart,
prometheus_client); without it these raise :class:`~resnet_bottleneck.errors.DependencyError`.
Importing this package imports none of them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .. import _checks
from ..errors import DependencyError, InputError, SettingError

#: A model name as it may stand in a URL path (``/predictions/<name>``).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about its model: ``name`` (the ``{model}`` of its routes), ``num_classes``,
    ``labels`` (a name per class, or None: indices), ``image_size``, ``crop`` (``(crop_pct, interpolation)``
    of the evaluation transform), ``runtime`` and ``precision`` (``None``: the runtime's default)."""

    name: str
    num_classes: int
    labels: tuple[str, ...] | None
    image_size: int
    crop: tuple[float, str]
    runtime: str = "jax"
    precision: str | None = None


def require() -> None:
    """Raise :class:`DependencyError` (with the pip command) unless the ``serve`` extra is installed."""
    missing = []
    for modules, package in (
        (("litserve",), "litserve"),
        (("python_multipart", "multipart"), "python-multipart"),  # its module's name before 0.0.13: multipart
        (("prometheus_client",), "prometheus-client"),
    ):
        if not any(_importable(module) for module in modules):
            missing.append(package)
    if missing:
        raise DependencyError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed to serve: "
            "pip install 'resnet-bottleneck[serve]'"
        )


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def check_name(name: str) -> str:
    """``name`` if it can stand in a URL path (letters, digits, ``.``, ``_``, ``-``), else a ``SettingError``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SettingError(
            "name", f"must be letters, digits, '.', '_' or '-' (up to 128, a URL path segment); got {name!r}"
        )
    return name


def describe_model(
    load: Callable[[], tuple],
    *,
    name: str | None = None,
    model: str | None = None,
    labels: str | os.PathLike | None = None,
    runtime: str = "jax",
    precision: str | None = None,
) -> ModelInfo:
    """The :class:`ModelInfo` of the classifier ``load`` opens, read in a spawned process (``load`` must pickle).

    ``load()`` returns ``(probabilities of a uint8 NHWC batch, number of classes, metadata, image size,
    (crop_pct, interpolation))`` (the command line's ``open_classifier``). ``name`` defaults to the model
    the metadata names (``resnet50``), else ``model`` (the architecture the weights were opened as), else
    ``"model"``. ``labels``: a file of class names (else the weights' own, else ImageNet's for 1,000
    classes, else none). ``runtime`` and ``precision`` are recorded as given.

    Raises:
      InputError: the library's error that ``load`` raised (its message, with its exit status).
      SettingError: (``field`` ``name``) a bad name; (``labels``, or ``weights`` for the weights' own names)
        class names that do not fit.
    """
    import multiprocessing

    from ..io import class_names

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    probe = context.Process(target=_probe, args=(load, send), name="describe-model", daemon=True)
    probe.start()
    send.close()
    try:
        answer = receive.recv()
    except EOFError:
        answer = ("bug", "the process that opens the model exited without an answer")
    finally:
        probe.join()
    if answer[0] != "ok":
        _, message, status = (*answer, 1)[:3]
        raise _Reported(message, status)
    num_classes, metadata, image_size, crop = answer[1]
    try:
        found = class_names(num_classes, metadata, labels)
    except InputError as err:
        raise SettingError("labels" if labels is not None else "weights", str(err)) from None
    if name is None:
        name = (metadata or {}).get("model") or model or "model"
    return ModelInfo(
        name=check_name(name),
        num_classes=num_classes,
        labels=tuple(found) if found else None,
        image_size=image_size,
        crop=(float(crop[0]), str(crop[1])),
        runtime=runtime,
        precision=precision,
    )


class _Reported(InputError):
    """The library error the probe's ``load`` raised, as it told it (its message and exit status)."""

    def __init__(self, message: str, status: int):
        Exception.__init__(self, message)
        self.status = status


def _probe(load, send) -> None:
    """In the spawned process: ``("ok", (classes, metadata, image size, crop))`` or ``("error", message, status)``."""
    from ..errors import Error

    try:
        _, num_classes, metadata, image_size, crop = load()
        send.send(("ok", (int(num_classes), dict(metadata or {}), int(image_size), tuple(crop))))
    except Error as err:
        send.send(("error", str(err), err.status))
    except Exception as err:  # a bug: told, not hidden
        send.send(("error", f"{type(err).__name__}: {err}", 1))


def build_server(
    load: Callable[[], tuple],
    info: ModelInfo,
    *,
    max_batch: int = 8,
    max_delay_ms: float = 0.0,
    max_body_mb: float = 20,
    topk: int = 5,
    workers: int = 1,
):
    """The ``litserve.LitServer`` of one classifier (:func:`run_server` runs it).

    ``load``: picklable, run in each of ``workers`` model processes (see :func:`describe_model`);
    ``info``: its :class:`ModelInfo`. Requests are batched by LitServe: up to ``max_batch`` images per
    forward pass: those queued when a replica takes a batch's first request, and those that arrive within
    ``max_delay_ms`` of it (:class:`~resnet_bottleneck.serve.api.QueuedBatchLoop`). Bodies over
    ``max_body_mb`` megabytes (10^6 bytes) are refused (413); ``topk`` classes answer by default.

    Raises:
      DependencyError: the ``serve`` extra is not installed. TypeError, ValueError: a bad setting (naming it).
    """
    require()
    max_batch = _checks.positive_int("max_batch", max_batch)
    workers = _checks.positive_int("workers", workers)
    topk = _checks.positive_int("topk", topk)
    max_delay_ms = _checks.non_negative("max_delay_ms", max_delay_ms)
    if not _checks.is_number(max_body_mb) or not 0 < max_body_mb < math.inf:
        raise SettingError("max_body_mb", f"must be a finite positive number of megabytes; got {max_body_mb!r}")
    from .server import build

    return build(
        load,
        info,
        max_batch=max_batch,
        max_delay_ms=float(max_delay_ms),
        max_body=int(max_body_mb * 1_000_000),
        topk=topk,
        workers=workers,
    )


def run_server(server, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve ``server`` (:func:`build_server`) on ``host``:``port`` until SIGTERM or SIGINT; then stop
    accepting, answer the requests in flight (within 7 s) and return.

    Raises:
      SettingError: ``host`` is not one LitServe binds (127.0.0.1, 0.0.0.0, ::) or ``port`` is not free.
    """
    require()
    from .server import run

    run(server, host=host, port=port)


__all__ = ["ModelInfo", "build_server", "describe_model", "run_server"]
