"""The LitServer: routes beside the prediction route, errors as ``{"error": ...}``, and a shutdown that drains.

LitServe (0.2.19, pinned) starts a multiprocessing manager (its queues), the model workers (spawned),
then the API servers (uvicorn, forked, sharing one listening socket). Its own shutdown on Ctrl+C ends
the API servers one after another and only then the workers; on SIGTERM it does nothing at all (the
main process dies and its children run on). :class:`_Server` keeps LitServe's order but makes it a
drain: SIGTERM or SIGINT in the main process asks every API server at once to stop (uvicorn then
stops accepting and finishes the requests in flight, whose workers are still running), ends the
listening socket for every process that shares it (new connections are refused), waits for the API
servers within :data:`GRACE` seconds, and only then ends the workers and the manager. The model
workers and the manager ignore SIGTERM and SIGINT, so a Ctrl+C at a terminal or a SIGTERM to the
whole process group (both signal every process) drains the same way.
"""

from __future__ import annotations

import html
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from importlib import resources

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from litserve.utils import WorkerSetupStatus
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors
from . import metrics
from .api import PREDICTIONS, ClassifierAPI, error, sigterm_while_parent_lives

logger = logging.getLogger(__name__)

#: Seconds the API servers get to answer what is in flight after SIGTERM (the whole exit stays under 10).
GRACE = 7.0
#: One drain at a time (see ``_Server._perform_graceful_shutdown``).
_SHUTDOWN = threading.Lock()
#: The hosts LitServe binds (its ``run`` refuses others).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


class WorkerDied(errors.Error):
    """A model worker that could not start or died while serving (not a request's fault): exit status 1."""

    status = 1


class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGINT in the main process: LitServe's ``run`` treats it as Ctrl+C and shuts down."""


class _Server(ls.LitServer):
    """LitServer with a draining shutdown (the module's docstring says why and how)."""

    _sockets: list = []
    _stopping = False

    def _init_manager(self, num_api_servers: int):
        # LitServe's queues live in a manager process forked here: it inherits a SIGTERM handler that ignores the
        # signal while this process lives, so a SIGTERM to the whole process group (systemd's default) cannot
        # end it under the requests in flight; it ends when the drain is over (manager.shutdown() below).
        # SIGINT it ignores by itself.
        previous = signal.signal(signal.SIGTERM, sigterm_while_parent_lives(os.getpid()))
        try:
            return super()._init_manager(num_api_servers)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):
        self._sockets = sockets  # the listening socket, which shutdown ends for every process
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):
        # LitServe's worker monitor (a thread) and a signal (this thread) may both ask: the first drains, holding
        # the lock; the second waits for it to finish, then returns
        with _SHUTDOWN:
            if self._stopping:
                return
            self._stopping = True
            # from here LitServe's monitor thread may find the manager gone: its complaints are expected, not news
            logging.getLogger("litserve").setLevel(logging.CRITICAL)
            servers = [
                w
                for w in uvicorn_workers.values()
                if isinstance(w, multiprocessing.process.BaseProcess) and w.is_alive()
            ]
            for w in servers:
                w.terminate()  # SIGTERM: uvicorn stops accepting and finishes the requests in flight
            # The listening socket is shared by every process forked after it was bound, LitServe's manager too, so
            # closing the API servers' copies would leave it listening (connections waiting, unanswered, for the
            # manager to end). shutdown() ends the listening in all of them: new connections are refused from now.
            # First a moment for uvicorn (it looks for the signal every 0.1 s) to stop accepting on it by itself.
            time.sleep(0.25)
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            deadline = time.monotonic() + GRACE + 1
            for w in servers:
                w.join(timeout=max(0.0, deadline - time.monotonic()))
                if w.is_alive():
                    logger.warning("API server %s did not finish in time; killing it", w.name)
                    w.kill()
                    w.join()
            self._transport.close(send_sentinel=False)
            for w in self.inference_workers:  # nothing is in flight any more (they ignore SIGTERM: see ClassifierAPI)
                w.kill()
            for w in self.inference_workers:
                w.join()
            manager.shutdown()


def ready(status) -> bool:
    """Every model worker loaded and warmed (LitServe marks a worker ready when ``setup`` returns)."""
    states = list(status.values()) if status else []
    return bool(states) and all(state == WorkerSetupStatus.READY for state in states)


def page(name: str) -> str:
    """The page of ``GET /``: ``page.html`` with ``__MODEL__`` replaced by the html-escaped model name."""
    text = resources.files("resnet_bottleneck.serve").joinpath("page.html").read_text(encoding="utf-8")
    return text.replace("__MODEL__", html.escape(name))


def build(load, info, *, max_batch: int, max_delay_ms: float, max_body: int, topk: int, workers: int):
    """The LitServer (see :func:`resnet_bottleneck.serve.build_server`)."""
    api = ClassifierAPI(
        load, info, max_batch=max_batch, batch_timeout=max_delay_ms / 1000, max_body=max_body, topk=topk
    )
    # fast_queue: answers travel back over ZeroMQ rather than a manager's queue (1 ms less per request, measured on
    # a small model: docs/serving.md)
    server = _Server(api, accelerator="cpu", workers_per_device=workers, disable_openapi_url=True, fast_queue=True)
    server.uvicorn_graceful_timeout = GRACE
    app = server.app
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]  # LitServe's "/" text
    app.add_middleware(metrics.MetricsMiddleware)
    described = describe(info, max_batch)
    text = page(info.name)

    def worker_status():
        return getattr(server, "workers_setup_status", None)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(text)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        if ready(worker_status()):
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "Unhealthy"}, status_code=503)

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def is_ready() -> JSONResponse:
        ok = ready(worker_status())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str) -> JSONResponse:
        if model != info.name:
            return error(404, f"no model {model!r} here; this server serves {info.name!r}")
        return JSONResponse(described)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        queue = server.litapi_request_queues.get("/predictions")
        try:
            depth = queue.qsize() if queue is not None else None
        except (OSError, EOFError):  # the manager is going away (shutdown)
            depth = None
        body, content_type = metrics.exposition(depth)
        return Response(body, media_type=content_type)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"bad request: {exc.errors()}")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    return server


def describe(info, max_batch: int) -> dict:
    """``GET /v2/models/{model}``: the Open Inference Protocol's model metadata, and what a client needs."""
    size = info.image_size
    return {
        "name": info.name,
        "versions": [],
        "platform": info.runtime,
        "runtime": info.runtime,
        "precision": info.precision,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, info.num_classes]}],
        "input_size": [size, size],
        "crop_pct": info.crop[0],
        "interpolation": info.crop[1],
        "classes": info.num_classes,
        "labels": list(info.labels) if info.labels else None,
        "max_batch_size": max_batch,
        "endpoint": PREDICTIONS.replace("{model}", info.name),
    }


def check_address(host: str, port: int) -> None:
    """``host`` one LitServe binds and ``port`` free there, else a ``SettingError`` naming the flag."""
    from ..errors import SettingError

    if host not in HOSTS:
        raise SettingError("host", f"must be one of {', '.join(HOSTS)} (the addresses LitServe binds); got {host!r}")
    if not 1024 <= port <= 65535:  # LitServe's run refuses the others
        raise SettingError("port", f"must be a port from 1024 to 65535; got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SettingError("port", f"{host}:{port} is not free ({err.strerror}); choose another --port") from None


def run(server, *, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT (see :func:`resnet_bottleneck.serve.run_server`)."""
    check_address(host, port)
    main = os.getpid()
    handlers = {}

    def stop(signum, frame):
        if os.getpid() != main:  # a forked API server before uvicorn installs its own handlers
            return
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)  # once: the drain is under way
        raise _Stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        handlers[sig] = signal.signal(sig, stop)
    try:
        with metrics.multiprocess_folder():
            server.run(host=host, port=port, log_level="warning", generate_client_file=False)
    except _Stop:  # before LitServe's run reached its own shutdown (still starting): nothing is in flight
        pass
    except RuntimeError as err:
        if "failed to start" not in str(err):  # LitServe's word for a worker whose setup raised
            raise
        raise WorkerDied(f"a model worker failed to start (its traceback is above): {err}") from None
    except (EOFError, ConnectionError):
        if not server._stopping:
            raise
        # LitServe's monitor shut the server down: a model worker died (its traceback is above)
        raise WorkerDied("a model worker stopped unexpectedly, so the server shut down (see the log above)") from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for child in multiprocessing.active_children():  # any left by a stop during the start
            child.kill()
            child.join()
