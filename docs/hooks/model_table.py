"""mkdocs hook: the table of every model name, generated from the library at build time.

``docs/timm.md`` holds a marker line, ``<!-- model-table -->``; this hook replaces it with one row per name of
``resnet_bottleneck.list_models()``: its parameter count (``arch.describe(name).param_count()``), its MACs per
image (``resnet_bottleneck.model_cost``) at its data config's input size, and that data config (input size,
interpolation, ``crop_pct``, mean and std where they are not ImageNet's, timm's default pretrained tag) from
``resnet_bottleneck.arch.data_configs.data_config``. Nothing is written by hand, so the page cannot drift from the
family table, the cost model or the data-config table. Building the table traces every model abstractly
(``jax.eval_shape``): about a minute and a half on two cores, once per build.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

MARKER = "<!-- model-table -->"
PAGE = "timm.md"
ROOT = Path(__file__).resolve().parents[2]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224  # the MACs' input size of a name without a data config


def _library():
    src = str(ROOT / "src")
    if src not in sys.path:  # build from a checkout without installing it
        sys.path.insert(0, src)
    import resnet_bottleneck

    return resnet_bottleneck


def data_configs():
    """``data_config(name) -> dict`` of the package, or ``None`` where the package has no data-config table."""
    _library()
    try:
        from resnet_bottleneck.arch.data_configs import data_config
    except ImportError:
        return None
    return data_config


def _vector(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def row(name: str, data_config=None) -> dict:
    """One name's cells: ``params``, ``macs`` (per image) at ``size`` (H, W), and its data config's cells
    (``'-'`` each without ``data_config``)."""
    rb = _library()
    from resnet_bottleneck import arch

    config = data_config(name) if data_config is not None else None
    height, width = tuple(config["input_size"][1:]) if config is not None else (DEFAULT_SIZE, DEFAULT_SIZE)
    if height != width:  # model_cost takes one square size; every ResNet of timm's has one
        raise ValueError(f"{name}'s data config has a non-square input size {config['input_size']!r}")
    cells = {
        "name": name,
        "params": arch.describe(name).param_count(),
        "macs": rb.model_cost(name, height)["macs"],
        "size": (height, width),
        "interpolation": "-",
        "crop_pct": "-",
        "mean_std": "-",
        "tag": "-",
    }
    if config is not None:
        mean, std = tuple(config["mean"]), tuple(config["std"])
        cells.update(
            interpolation=config["interpolation"],
            crop_pct=f"{config['crop_pct']:g}",
            mean_std="ImageNet's"
            if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD)
            else f"{_vector(mean)} / {_vector(std)}",
            tag=f"`{config['tag']}`" if config.get("tag") else "-",
        )
    return cells


def render(rows: list[dict], with_data_config: bool) -> str:
    """The Markdown table of ``rows`` (see :func:`row`)."""
    size_note = "its input size" if with_data_config else f"{DEFAULT_SIZE}x{DEFAULT_SIZE}"
    lines = [
        f"| name | parameters | GMACs at {size_note} | input size | interpolation | crop_pct | mean / std "
        "| timm's default weights |",
        "|---|--:|--:|---|---|--:|---|---|",
    ]
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}" if with_data_config else "-"
        lines.append(
            f"| `{r['name']}` | {r['params']:,} | {r['macs'] / 1e9:.2f} | {size} | {r['interpolation']} | "
            f"{r['crop_pct']} | {r['mean_std']} | {r['tag']} |"
        )
    return "\n".join(lines)


@functools.cache
def model_table(names: tuple[str, ...] | None = None) -> str:
    """The table of ``names`` (default: every name of ``list_models()``), once per process."""
    config = data_configs()
    names = tuple(_library().list_models()) if names is None else names
    table = render([row(name, config) for name in names], config is not None)
    if config is None:
        table += "\n\nThe data configs are missing from this build (`resnet_bottleneck.arch.data_configs`)."
    return table


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"docs/{PAGE}: the marker {MARKER!r} is missing; the model table goes there")
        return markdown.replace(MARKER, model_table())
    return markdown
