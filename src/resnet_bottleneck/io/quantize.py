"""int8 ONNX: static post-training quantization of a float32 export, calibrated on real images.

:func:`quantize_onnx` takes the float32 graph :func:`~resnet_bottleneck.io.onnx.export_onnx` writes
(BatchNorm already folded, one ``Conv`` per convolution) and writes it in ONNX's QDQ form with ONNX
Runtime's own quantizer (``onnxruntime.quantization.quantize_static``, after its recommended
pre-processing): every ``Conv`` and the ``Gemm`` head take int8 weights, one scale per output channel,
and uint8 activations (:data:`ACTIVATIONS`), each activation's range calibrated on images passed
through the model's own evaluation transform (its file's image size, resize, crop and normalisation:
what ``predict`` and ``evaluate`` feed it). One file that ONNX Runtime and OpenVINO both run
(:func:`~resnet_bottleneck.io.onnx.load_onnx`); its metadata records ``precision`` ``int8``, the
calibration set, the count and the method (:data:`METADATA_KEYS`).

``onnx`` and ``onnxruntime`` are needed (``pip install 'resnet-bottleneck[onnx]'``), imported only when called.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _checks
from .._files import atomic_write
from ..data.digits import ImageArrays
from ..data.folder import IMAGE_SUFFIXES, ImageFiles, images_under
from ..errors import DataError, FileError, ImageError, InputError, SettingError
from .metadata import eval_crop, preprocessing

#: The activation and weight types: uint8 activations, int8 weights ("U8S8"). ONNX Runtime's advice for
#: x86 CPUs with VNNI (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html and
#: ``quantize_static``'s docstring, "Choosing parameters for CPU inference"), and the faster form on both
#: runtimes we ship in issue 26's measurements (ResNet-50, batch 1, 2 threads: ONNX Runtime 26 ms with
#: uint8 activations, 61 ms with int8 ones; OpenVINO 12 ms on the uint8 file).
ACTIVATIONS, WEIGHTS = "uint8", "int8"
#: Calibration methods: ONNX Runtime's min-max (the default), entropy (KL divergence) and percentile (99.999%).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: How many calibration images are used where the caller does not say.
CALIBRATION_IMAGES = 256
#: ``metadata_props`` an int8 file carries besides its float32 export's.
METADATA_KEYS = ("precision", "quantization", "calibration", "calibration_images", "calibration_method")
#: Images a calibration run feeds at once (bounds the intermediate outputs ONNX Runtime holds in memory).
_BATCH = 8


@dataclass(frozen=True)
class Quantized:
    """What :func:`quantize_onnx` did: the file written, the images it calibrated on (``images`` of the
    ``requested``; fewer where the set holds fewer readable ones), the unreadable ones it skipped, the
    calibration set's description and the method."""

    path: Path
    images: int
    requested: int
    available: int
    skipped: tuple[str, ...]
    calibration: str
    method: str


def calibration_folder(path: str | os.PathLike, field: str = "calibration") -> ImageFiles:
    """Every image under ``path`` (``.png``, ``.jpg``, ...; recursively, class folders or not, sorted):
    calibration needs no labels.

    Raises:
      DataError: (``field``) ``path`` is not a directory, or holds no images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(field, f"{root} is not a directory")
    found = [os.path.relpath(p, root) for p in images_under(root)]
    if not found:
        raise DataError(field, f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    files = np.asarray([f.encode() for f in found], dtype=bytes)
    return ImageFiles(str(root), files, np.zeros(len(found), np.int32), ("",))


def _file_settings(proto, source: str) -> tuple[str, int | None, int, tuple, tuple, float, str]:
    """``(layout, fixed batch, image size, mean, std, crop_pct, interpolation)`` of a float32 export."""
    from .onnx import LAYOUTS

    metadata = {p.key: p.value for p in proto.metadata_props}
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise InputError(
            f"{source} has {len(proto.graph.input)} inputs and {len(proto.graph.output)} outputs; "
            "an image classifier has one of each"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    out = proto.graph.output[0].type.tensor_type.shape.dim
    if len(out) != 2:
        raise InputError(
            f"{source}'s output has {len(out)} axes; int8 export quantizes a classifier (output [N, classes]): "
            "a headless model's feature map has no accuracy to keep"
        )
    layout = metadata.get("layout")
    if layout not in LAYOUTS or len(dims) != 4:
        raise InputError(f"{source} is not an export of this library (no 'layout' metadata, or not 4-D images)")
    size, mean, std = preprocessing(metadata, source)
    fixed = dims[2] if layout == "NCHW" else dims[1]
    crop_pct, interpolation = eval_crop(metadata, source)
    return layout, dims[0], fixed or size, mean, std, crop_pct, interpolation


def _calibration_images(source, count: int, size: int, crop: tuple[float, str], seed: int):
    """``(uint8 NHWC images, skipped paths)``: up to ``count`` readable images of ``source`` in a seeded
    random order (so a class-sorted folder gives every class its share), each through the evaluation
    transform; an unreadable one is skipped and the next in that order taken."""
    from ..data.pipeline import read

    order = np.random.default_rng(seed).permutation(len(source))
    images, skipped = [], []
    for index in order:
        if len(images) == count:
            break
        try:
            images.append(read(source, int(index), size, None, *crop))
        except ImageError:
            skipped.append(source.path(int(index)))
    return np.stack(images) if images else None, tuple(skipped)


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader``: normalised batches in the graph's layout, ``set_range``
    selecting which ones (so each batch's intermediate outputs are reduced before the next one runs)."""

    def __init__(self, batches: list[np.ndarray], input_name: str):
        self.batches, self.input_name = batches, input_name
        self.start, self.end = 0, len(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self):
        if self.start >= self.end:
            return None
        self.start += 1
        return {self.input_name: self.batches[self.start - 1]}


def _batches(images: np.ndarray, layout: str, batch: int | None, mean, std) -> list[np.ndarray]:
    """The calibration images, normalised, in ``layout``, in batches of the graph's fixed ``batch`` (the last
    one filled up with images from the start) or of :data:`_BATCH`."""
    from ..data.transforms import normalize

    x = normalize(images, mean, std)
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    step = batch or _BATCH
    if batch and len(x) % batch:
        x = np.concatenate([x, np.resize(x, (batch - len(x) % batch, *x.shape[1:]))])
    return [np.ascontiguousarray(x[i : i + step]) for i in range(0, len(x), step)]


def quantize_onnx(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration,
    *,
    images: int = CALIBRATION_IMAGES,
    method: str = "minmax",
    description: str | None = None,
    seed: int = 0,
) -> Quantized:
    """Write ``float_path`` (a float32 classifier from :func:`~resnet_bottleneck.io.onnx.export_onnx`) as int8
    QDQ at ``out_path``: per-channel int8 weights, uint8 activations calibrated on ``images`` images; atomic.

    Args:
      float_path: the float32 ``.onnx`` file (its metadata gives the evaluation transform: image size,
        mean, std, crop and interpolation; its layout and any fixed batch are kept).
      out_path: the int8 ``.onnx`` file to write.
      calibration: the images to calibrate on: a folder (every image under it) or a data source
        (:class:`~resnet_bottleneck.data.ImageFiles`, :class:`~resnet_bottleneck.data.ImageArrays`: a run's
        training images, say).
      images: how many to use (default :data:`CALIBRATION_IMAGES`), chosen in a ``seed``-ed random order;
        all of them where there are fewer.
      method: ``'minmax'``, ``'entropy'`` or ``'percentile'`` (:data:`CALIBRATION_METHODS`).
      description: what ``metadata['calibration']`` says the set is (default: the folder, or the count of
        in-memory images).

    Returns:
      a :class:`Quantized`: the images used, requested and skipped (unreadable), for the caller to report.

    Raises:
      DataError: (``calibration``) no such folder, no images, or none readable; (``images``, ``method``) bad values.
      InputError: ``float_path`` is not a float32 classifier exported by this library (a headless model's
        map, a foreign file).
    """
    from .onnx import _require

    onnx = _require("onnx")
    ort = _require("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = _checks.positive_int("images", images)
    if method not in CALIBRATION_METHODS:
        raise SettingError("method", f"must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}")
    float_path = Path(float_path)
    if not float_path.is_file():
        raise FileError(f"no such ONNX file: {float_path}")
    try:
        proto = onnx.load(str(float_path))
    except Exception as err:  # noqa: BLE001 - protobuf's decode errors
        raise InputError(f"{float_path} is not an ONNX file ({err})") from None
    metadata = {p.key: p.value for p in proto.metadata_props}
    if metadata.get("precision") == "int8":
        raise InputError(f"{float_path} is already int8; quantize its float32 export")
    layout, batch, size, mean, std, crop_pct, interpolation = _file_settings(proto, str(float_path))
    if isinstance(calibration, (str, os.PathLike)):
        description = description or os.fspath(calibration)
        calibration = calibration_folder(calibration)
    elif not isinstance(calibration, (ImageFiles, ImageArrays)):
        raise SettingError(
            "calibration", f"must be a folder or an ImageFiles/ImageArrays source; got {type(calibration).__name__}"
        )
    description = description or f"{len(calibration)} images in memory"
    if len(calibration) == 0:
        raise DataError("calibration", f"{description} holds no images")
    pixels, skipped = _calibration_images(calibration, images, size, (crop_pct, interpolation), seed)
    if pixels is None:
        raise DataError(
            "calibration",
            f"none of the {len(calibration)} images of {description} can be read, e.g. {skipped[0]}",
        )
    reader = _Reader(_batches(pixels, layout, batch, mean, std), proto.graph.input[0].name)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="resnet-bottleneck-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepared))  # ONNX Runtime's advised first step (shapes, cleanup)
        # ONNX Runtime's histogram collector prints a line a batch; the caller's stdout stays its own.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8 if ACTIVATIONS == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options={"CalibStridedMinMax": 1},  # one batch at a time: memory bounded
            )
        result = onnx.load(str(quantized))
    props = {
        **metadata,
        "precision": "int8",
        "quantization": f"QDQ; {WEIGHTS} weights per output channel, {ACTIVATIONS} activations; "
        f"onnxruntime {ort.__version__} quantize_static",
        "calibration": description,
        "calibration_images": str(len(pixels)),
        "calibration_method": method,
    }
    del result.metadata_props[:]
    for key, value in props.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    data = result.SerializeToString()
    path = atomic_write(out_path, lambda f: f.write(data))
    return Quantized(Path(path), len(pixels), images, len(calibration), skipped, description, method)


def calibration_summary(result: Quantized, shown: int = 5) -> list[str]:
    """One line each for what a caller should hear: the unreadable images skipped (named), and a set
    smaller than asked for (all of it used)."""
    lines = []
    if result.skipped:
        more = " ..." if len(result.skipped) > shown else ""
        lines.append(
            f"skipped {len(result.skipped)} unreadable calibration image(s): {', '.join(result.skipped[:shown])}{more}"
        )
    if result.images < result.requested:
        lines.append(
            f"calibrated on all {result.images} readable image(s) of {result.calibration} "
            f"({result.requested} asked for)"
        )
    return lines


__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_IMAGES",
    "CALIBRATION_METHODS",
    "METADATA_KEYS",
    "Quantized",
    "calibration_folder",
    "calibration_summary",
    "quantize_onnx",
]
