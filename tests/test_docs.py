"""The manual runs as written: every code block of README.md and docs/*.md, and the strict site build.

Each page's blocks run in order in a fresh folder that holds small stand-ins for the user's files the page
names (``tests/docs_standins.py``): ```` ```python ```` blocks in one namespace per page, so a later block may
use an earlier one's names and a name never defined on the page is a NameError; a Python block with an
``if __name__ == "__main__":`` guard is a script (grain's worker processes need the guard) and runs as one,
``python block.py`` in that folder; ```` ```sh ```` / ```` ```bash ```` blocks run with ``bash -e`` there, with
this interpreter's ``bin`` first on PATH. ```` ```text ```` blocks show output and are not run; any other
language fails the test, so that no block escapes it. The examples are shrunk where the text allows:
small models (resnet_tiny, resnet18), tiny images (32-64 pixels), one or two epochs, folders of 3 classes
of 8 JPEGs; the README's Quick start (``make demo``, ``make test``) is the test command itself and is
checked with ``make -n``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_standins import named_in, prepare

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {"python", "sh", "bash"}
SHOWN = {"text"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of each fenced block of ``page``, in order."""
    text = page.read_text()
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    src = str(ROOT / "src")  # the checkout under test, also where the venv's install points elsewhere
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    return env


def _check_run(cmd: list[str], where: str, cwd: Path, timeout: int = 900) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{where} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def _is_quick_start(code: str) -> bool:
    commands = [line.split("#")[0].split() for line in code.splitlines() if line.split("#")[0].strip()]
    return bool(commands) and all(c[0] == "make" for c in commands)


def _nnx_claims(ns: dict, printed: str) -> bool:
    """docs/nnx.md: the model is an NNX ResNet, it reaches 95% test accuracy, and the page prints that accuracy."""
    from resnet_bottleneck.nnx import ResNet

    return (
        isinstance(ns["model"], ResNet)
        and ns["accuracy"] >= 0.95  # "requires at least 95% test accuracy"
        and f"test accuracy {ns['accuracy']:.3f}\n" in printed
    )


#: What a page's text claims of its examples' results, checked after its blocks ran
#: (page -> check of the namespace and what the Python blocks printed).
CLAIMS = {
    "docs/nnx.md": _nnx_claims,
}


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> Path:
    """Where the stand-ins are made, once for every page."""
    return tmp_path_factory.mktemp("docs-standins")


def _pages_with_blocks() -> list[Path]:
    return [page for page in PAGES if any(lang in RUN for lang, _, _ in blocks(page))]


def test_every_block_has_a_known_language():
    for page in PAGES:
        for lang, _, line in blocks(page):
            assert lang in RUN | SHOWN, f"{page.relative_to(ROOT)}:{line}: a ```{lang} block is neither run nor text"


def run_page(page: Path, folder: Path, standins: Path) -> dict:
    """Run ``page``'s blocks in order in ``folder`` (the current directory); returns the Python namespace."""
    runnable = [(lang, code, line) for lang, code, line in blocks(page) if lang in RUN]
    prepare(folder, named_in("".join(code for _, code, _ in runnable)), standins)
    name = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name
    namespace: dict = {"__name__": f"docs:{page.name}"}
    for lang, code, line in runnable:
        where = f"{name}:{line}"
        if lang == "python" and 'if __name__ == "__main__":' in code:
            script = folder / f"block_{line}.py"
            script.write_text(code)
            _check_run([sys.executable, script.name], where, folder)
        elif lang == "python":
            exec(compile(code, where, "exec"), namespace)
        elif _is_quick_start(code):  # the test command itself: its targets must exist and resolve
            targets = [c.split()[1] for c in code.splitlines() if c.split("#")[0].strip()]
            _check_run(["make", "-n", "-C", str(ROOT), *targets], where, folder)
        else:
            _check_run(["bash", "-e", "-o", "pipefail", "-c", code], where, folder)
    return namespace


@pytest.mark.parametrize("page", _pages_with_blocks(), ids=lambda page: str(page.relative_to(ROOT)))
def test_page_blocks_run_as_written(page, tmp_path, standins, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = run_page(page, tmp_path, standins)
    printed = capsys.readouterr().out
    claim = CLAIMS.get(str(page.relative_to(ROOT)))
    assert claim is None or claim(namespace, printed), f"{page.relative_to(ROOT)}: a claim about its examples fails"


def test_the_nnx_claims_fail_on_a_linen_model_or_nothing_printed():
    from resnet_bottleneck import create_model
    from resnet_bottleneck.nnx import ResNet

    class Fake(ResNet):  # stands for the NNX model without building one
        def __init__(self):
            pass

    nnx_model, printed = Fake(), "test accuracy 0.970\n"
    assert _nnx_claims({"model": nnx_model, "accuracy": 0.97}, printed)
    assert not _nnx_claims({"model": create_model("resnet_tiny"), "accuracy": 0.97}, printed)
    assert not _nnx_claims({"model": nnx_model, "accuracy": 0.97}, "")
    assert not _nnx_claims({"model": nnx_model, "accuracy": 0.90}, "test accuracy 0.900\n")


@pytest.mark.parametrize(
    "text, error",
    [
        ("```python\nx = 1\n```\n\n```python\nprint(backbone)\n```\n", NameError),  # a name never defined
        ("```sh\nresnet-bottleneck forward --mid 0\n```\n", AssertionError),  # a command that fails
        ("```sh\ntrue\nfalse\ntrue\n```\n", AssertionError),  # any line of a block, not just the last
        ('```python\nif __name__ == "__main__":\n    raise SystemExit(3)\n```\n', AssertionError),  # a script
    ],
)
def test_a_broken_block_fails_the_page(text, error, tmp_path, standins, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(text)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(error):
        run_page(page, tmp_path / "run", standins)


def test_blocks_of_a_page_share_one_namespace_and_folder(tmp_path, standins, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nvalue = 41\n```\n```text\nnot run\n```\n```python\nvalue += 1\n```\n"
        "```sh\ntest -f cat.jpg && echo made > made.txt\n```\n"
    )
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert run_page(page, tmp_path / "run", standins)["value"] == 42
    assert (tmp_path / "run" / "made.txt").read_text() == "made\n"  # the stand-in cat.jpg was there


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    """A broken link, a missing page or API reference, or a bad include fails the build."""
    _check_run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        "mkdocs build --strict",
        ROOT,
    )
    cli = (tmp_path / "cli" / "index.html").read_text()
    assert "resnet-bottleneck train" in cli and "--trainable-layers" in cli
    assert (tmp_path / "api" / "models" / "index.html").read_text().count("create_model") > 1
    from resnet_bottleneck import list_models

    timm_page = (tmp_path / "timm" / "index.html").read_text()
    assert "model-table" not in timm_page  # the marker was replaced
    missing = [name for name in list_models() if f"<td><code>{name}</code></td>" not in timm_page]
    assert not missing, f"the model table lacks {missing}"


def test_cli_reference_names_every_subcommand_and_flag():
    """The generated reference holds every subcommand and every flag that ``--help`` prints."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import cli_reference
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    from resnet_bottleneck.cli import build_parser

    page = cli_reference.cli_reference()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) >= 7
    for name, sub in commands.items():
        assert f"## `resnet-bottleneck {name}`" in page, name
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", sub.format_help()):
            assert f"{flag}" in page, (name, flag)


def _hook(name: str):
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))


def test_model_table_rows_hold_the_counts_macs_and_data_config():
    """The generated table's cells against independent figures: timm's own parameter count of resnet50d,
    torchvision's published 4.09 GMACs of resnet50 at 224; a stand-in data config's size, interpolation,
    crop and (not ImageNet's) mean and std pass through; without data configs, 224 and dashes."""
    import timm

    table = _hook("model_table")
    resnet50d = sum(p.numel() for p in timm.create_model("resnet50d").parameters())

    def config(name):
        size = 288 if name == "resnet50" else 224
        mean = (0.5, 0.5, 0.5) if name == "resnet50" else table.IMAGENET_MEAN
        std = (0.5, 0.5, 0.5) if name == "resnet50" else table.IMAGENET_STD
        return dict(input_size=(3, size, size), interpolation="bicubic", mean=mean, std=std, crop_pct=0.95, tag=None)

    plain = table.render([table.row("resnet50"), table.row("resnet50d")], with_data_config=False).splitlines()
    assert plain[2] == "| `resnet50` | 25,557,032 | 4.09 | - | - | - | - | - |"
    assert plain[3].startswith(f"| `resnet50d` | {resnet50d:,} | ")
    rows = table.render([table.row("resnet50", config), table.row("resnet50d", config)], with_data_config=True)
    big, small = rows.splitlines()[2:]
    assert (
        big.startswith("| `resnet50` | 25,557,032 | ") and float(big.split(" | ")[2]) > 4.09 * (288 / 224) ** 2 * 0.95
    )
    assert big.endswith(" | 288x288 | bicubic | 0.95 | (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5) | - |")
    assert small.endswith(" | 224x224 | bicubic | 0.95 | ImageNet's | - |")


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_docs_quote_no_benchmark_figures_by_hand():
    """Speed figures live in BENCHMARKS.md alone (regenerated by `make bench`); the pages link to it."""
    for page in PAGES:
        text = page.read_text()
        for figure in re.findall(r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?x (?:PyTorch|faster|slower|Linen)", text):
            pytest.fail(f"{page.relative_to(ROOT)} quotes a benchmark figure: {figure!r}")


def test_the_built_site_is_ignored():
    assert "site/" in (ROOT / ".gitignore").read_text().split()
