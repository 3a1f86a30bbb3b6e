"""The model behind the endpoint, as LitServe's ``LitAPI``, and ``POST /predictions/{model}`` as its ``LitSpec``.

LitServe pickles :class:`ClassifierAPI` into each model worker (a spawned process): ``setup`` loads the
model there (``load``, a picklable function from the command line) and warms it; LitServe's batching
loop (:class:`QueuedBatchLoop`) then hands it up to ``max_batch`` requests at a time: those queued when
the first is taken, and those that arrive within ``batch_timeout`` of it.
Each request's image is decoded in the worker with the evaluation transform ``predict`` uses
(``data.transforms.eval_transform``: the same resize, crop and resampling, the same refusal of an
image whose header claims more pixels than PIL's limit, before any decoding). An image that cannot be
decoded does not fail its batch: it travels as its error message and comes back as a 400.

:class:`PredictionSpec` is the HTTP side (in LitServe's API-server processes): it checks the model
name, ``?topk=`` and the body's size (``Content-Length`` and the bytes as they stream) before anything
reaches the queue, so a request refused for these costs a worker nothing. An image is decoded in a
worker; PIL's pixel limit (checked from the header) bounds what one request can cost it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import time
import uuid
from queue import Empty

import litserve as ls
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from litserve.callbacks import EventTypes
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem
from starlette.requests import ClientDisconnect

logger = logging.getLogger(__name__)

#: LitServe's name for the prediction route (its request queue's key); the route itself is ``PREDICTIONS``.
API_PATH = "/predictions"
PREDICTIONS = "/predictions/{model}"


def error(status: int, message: str) -> JSONResponse:
    """The server's every error: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


class _Body(io.BytesIO):
    """The request's image bytes as a file for PIL; named so in error messages (never a path)."""

    def __str__(self) -> str:
        return "the request body"

    __repr__ = __str__


def jax_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch shapes a JAX worker compiles (powers of two up to ``max_batch``, and ``max_batch``): a batch is
    padded to the next, so a quiet server runs small batches and a busy one never compiles again."""
    sizes, size = {max_batch}, 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class QueuedBatchLoop(BatchedLoop):
    """LitServe's batched loop with another way to gather a batch (its ``get_batch_requests``): wait, without
    polling, for a batch's first request; then take at once what is already queued, up to ``max_batch``; and
    wait for more only until ``batch_timeout`` after the first request arrived. With a delay of 0 (the default)
    one client never waits for company, while under load the requests that queue during a forward pass form
    the next batch (Triton's dynamic batching without a queue delay). LitServe's own loop instead waits the
    whole delay after picking up a request even when nothing else is coming, and with a delay of 0 spins on
    its queue (half a core while idle)."""

    #: Seconds an idle worker blocks on the queue before going round LitServe's loop again.
    IDLE = 0.5

    def get_batch_requests(self, lit_api, request_queue, transport):
        payloads, timed_out = [], []
        try:
            item = request_queue.get(timeout=self.IDLE)
        except Empty:
            return payloads, timed_out
        deadline = self._take(item, lit_api, transport, payloads, timed_out) + lit_api.batch_timeout
        while len(payloads) + len(timed_out) < lit_api.max_batch_size:
            try:
                item = request_queue.get_nowait()
            except Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = request_queue.get(timeout=remaining)
                except Empty:
                    break
            self._take(item, lit_api, transport, payloads, timed_out)
        return payloads, timed_out

    def _take(self, item, lit_api, transport, payloads, timed_out) -> float:
        """As LitServe's ``collate_requests`` takes a queued request (the stop sentinel, the START message,
        its request timeout); returns when the request arrived (``time.monotonic``, system-wide)."""
        if item == _SENTINEL_VALUE:
            raise _StopLoopError()
        response_queue_id, uid, timestamp, x_enc = item
        self.put_response(
            transport=transport,
            response_queue_id=response_queue_id,
            uid=uid,
            response_data=(),
            status=LitAPIStatus.START,
            response_type=LoopResponseType.REGULAR,
        )
        if lit_api.request_timeout not in (-1, False) and time.monotonic() - timestamp > lit_api.request_timeout:
            timed_out.append((response_queue_id, uid))
        else:
            payloads.append((response_queue_id, uid, x_enc))
        return timestamp


def sigterm_while_parent_lives(parent: int):
    """A SIGTERM handler for the server's helper processes (``parent``: the main process): ignored while the main
    process lives (it ends them itself, after the drain), obeyed once they are orphans (the main process was
    killed outright), so a plain ``kill`` still ends them then."""

    def handler(signum, frame):
        if os.getpid() != parent and os.getppid() != parent:
            raise SystemExit(0)

    return handler


class ClassifierAPI(ls.LitAPI):
    """One image classifier, batched by LitServe.

    ``load``: a picklable function of no arguments, run once in each worker, returning what
    ``cli._common.open_classifier`` returns: ``(probabilities of a uint8 NHWC batch, number of classes,
    metadata, image size, (crop_pct, interpolation))``. ``info``: the :class:`~resnet_bottleneck.serve.ModelInfo`
    the server describes (its labels name the classes in responses).
    """

    def __init__(self, load, info, *, max_batch: int, batch_timeout: float, max_body: int, topk: int):
        super().__init__(
            max_batch_size=max_batch,
            batch_timeout=batch_timeout,
            spec=PredictionSpec(info, max_body=max_body, topk=topk),
            loop=QueuedBatchLoop() if max_batch > 1 else "auto",
        )
        self.load, self.info, self.topk = load, info, topk

    def setup(self, device) -> None:
        """Load the model and run it once on every batch shape it will see (JAX compiles each): the worker is
        ready, and LitServe says so, only after that. SIGINT and SIGTERM (Ctrl+C, or a signal to the whole
        process group) are left to the main process, which stops the HTTP side first and ends this worker
        (SIGKILL) once nothing is in flight; an orphaned worker obeys SIGTERM."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, sigterm_while_parent_lives(os.getppid()))
        forward, num_classes, _, image_size, _ = self.load()
        if num_classes != self.info.num_classes or image_size != self.info.image_size:
            raise RuntimeError(f"the model changed since it was described: {num_classes} classes at {image_size}")
        self.forward = forward
        self.shapes = jax_buckets(self.max_batch_size) if self.info.runtime == "jax" else ()
        # JAX compiles each batch shape; OpenVINO compiles its batch-splitting model on the first batch of two
        for size in self.shapes or ((1, 2) if self.max_batch_size > 1 else (1,)):
            self.forward(np.zeros((size, image_size, image_size, 3), np.uint8))
        from .metrics import batch_histogram

        self.batch_sizes = batch_histogram(self.max_batch_size)

    def decode_request(self, request, context):
        """``request`` (``{"image": bytes, "topk": k}``) -> the image as the model sees it (uint8 HWC), or the
        reason it cannot be read (a string)."""
        from ..data.transforms import eval_transform
        from ..errors import ImageError

        context["topk"] = request["topk"]
        try:
            return eval_transform(_Body(request["image"]), self.info.image_size, *self.info.crop)
        except ImageError as err:
            return str(err)
        except Exception as err:  # a decoder's own failure on hostile bytes: this request's error, not the batch's
            logger.warning("decoding a request's image failed: %r", err)
            return f"cannot read the request body as an image ({type(err).__name__}: {err})"

    def batch(self, inputs):
        return list(inputs)  # images and error messages side by side; predict stacks the images

    def predict(self, inputs):
        """Probabilities of each decoded image, one forward pass for the batch; an error message passes through.
        With ``max_batch`` 1 LitServe hands over one request's input, not a list, and takes one output back."""
        if self.max_batch_size == 1:
            return self._predict([inputs])[0]
        return self._predict(inputs)

    def _predict(self, inputs):
        self.batch_sizes.observe(len(inputs))
        images = [x for x in inputs if not isinstance(x, str)]
        if not images:
            return list(inputs)
        batch = np.stack(images)
        padded = next((s for s in self.shapes if s >= len(images)), len(images))
        if padded > len(images):
            batch = np.concatenate([batch, np.zeros((padded - len(images), *batch.shape[1:]), batch.dtype)])
        probabilities = iter(np.asarray(self.forward(batch))[: len(images)])
        return [x if isinstance(x, str) else next(probabilities) for x in inputs]

    def unbatch(self, output):
        return output

    def encode_response(self, output, context):
        """The top-k as ``predict --json`` orders them (most probable first, ``np.argsort(-p)``), or the error."""
        if isinstance(output, str):
            return {"error": output, "status": 400}
        best = np.argsort(-output)[: min(context["topk"], output.size)]
        labels = self.info.labels
        return {
            "predictions": [
                {"index": int(i), "label": labels[i] if labels else str(int(i)), "probability": float(output[i])}
                for i in best
            ]
        }


class PredictionSpec(LitSpec):
    """``POST /predictions/{model}``: the image's bytes as the body, or a multipart form with the image in field
    ``data``; ``?topk=`` (a positive integer) overrides the default. Answers ``{"model", "predictions"}``, or
    ``{"error"}`` with 400 (not an image, empty, bad topk), 404 (another model), 413 (over ``max_body`` bytes)."""

    def __init__(self, info, *, max_body: int, topk: int):
        super().__init__()
        self.api_path = API_PATH
        self.info, self.max_body, self.topk = info, max_body, topk
        self.add_endpoint(PREDICTIONS, self.predictions, ["POST"])

    def decode_request(self, request, context_kwargs=None):  # the LitAPI decodes; LitSpec asks for both
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    async def predictions(self, model: str, request: Request):
        if model != self.info.name:
            return error(404, f"no model {model!r} here; this server serves {self.info.name!r}")
        topk = request.query_params.get("topk")
        if topk is None:
            topk = self.topk
        elif not (
            topk.isascii() and topk.isdigit() and len(topk) <= 9 and int(topk) > 0
        ):  # int() of 4,300+ digits raises
            return error(400, f"topk must be a positive integer; got {topk!r}")
        else:
            topk = int(topk)
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            return body
        if not body:
            return error(400, "the request has no image: send its bytes as the body, or a form with it in field 'data'")
        return await self._answer({"image": body, "topk": topk})

    async def _body(self, request: Request):
        """The image's bytes (the body, or a form's ``data`` file), or the error response: 413 as soon as the
        declared or the streamed size passes ``max_body``."""
        limit = self.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return error(400, f"Content-Length must be a number of bytes; got {declared!r}")
            if len(declared) > 18 or int(declared) > limit:  # int() of 4,300+ digits raises
                return error(413, f"the body's {declared} bytes are more than this server's limit of {limit}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return error(413, f"the body is more than this server's limit of {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the client went away mid-upload: nobody reads the answer, nothing to log
            return error(400, "the client disconnected before the body was complete")
        body = b"".join(chunks)
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return body
        request._body = body  # Starlette's form parser reads the body from here (already read)
        try:
            form = await request.form()
        except Exception as err:  # a malformed multipart body
            return error(400, f"cannot read the multipart form: {err}")
        try:
            data = form.get("data")
            if data is None:
                return error(400, f"the form has no field 'data' (the image); got {sorted(form.keys())}")
            if isinstance(data, str):
                return error(400, "the form's field 'data' must be the image file, not text")
            return await data.read()
        finally:
            await form.close()

    async def _answer(self, payload: dict):
        """Queue ``payload`` for a worker (LitServe's request queue and response buffer) and answer its result."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self._server._callback_runner.trigger_event(
            EventTypes.ON_REQUEST.value, active_requests=self._server.active_requests, litserver=self._server
        )
        # queued now: LitServe's request timeout and --max-delay-ms count from here, not from the upload's start
        self.request_queue.put_nowait((self.response_queue_id, uid, time.monotonic(), payload))
        await event.wait()
        response, status = self.response_buffer.pop(uid).response
        if status != LitAPIStatus.OK:
            logger.error("the model worker failed on a request: %r", response)
            if getattr(response, "status_code", None) == 504:
                return error(504, "the request waited too long for a model worker")
            return error(500, "the model worker failed on this request (see the server's log)")
        if "error" in response:
            return error(response["status"], response["error"])
        return JSONResponse({"model": self.info.name, **response})
