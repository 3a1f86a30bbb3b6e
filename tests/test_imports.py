"""The package's parts import each other without a cycle, function-level imports included.

A part is ``resnet_bottleneck.<first component>`` (``io``, ``training``, ``models``, ``_checks``, ...).
Every module under ``src/resnet_bottleneck`` is parsed with ``ast``: each ``import`` and ``from ...
import`` anywhere in it (module level, inside functions, under ``if TYPE_CHECKING``), relative or
absolute, gives an edge from the module's part to the imported part. The part graph must be acyclic,
and no part but ``cli`` itself (and ``__main__``, ``python -m``'s entry) may import ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "resnet_bottleneck"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _module_name(path: Path, root: Path = ROOT) -> list[str]:
    """``src/resnet_bottleneck/io/onnx.py`` -> ``['resnet_bottleneck', 'io', 'onnx']``; a package's
    ``__init__.py`` is the package itself."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _part(module: list[str]) -> str | None:
    """The part of an absolute module name inside the package; None outside it or for the package itself."""
    if len(module) < 2 or module[0] != PACKAGE:
        return None
    return module[1]


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[list[str], int]]:
    """Every absolute module name ``path`` imports (with the line), resolving relative imports.

    ``from . import a, b`` imports the modules ``<package>.a`` and ``<package>.b`` (they may be
    submodules); ``from .x import y`` imports ``<package>.x`` (and ``<package>.x.y`` if that is a
    module: recorded too, which for parts changes nothing but keeps the list honest).
    """
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split("."), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = node.module.split(".")
            found.append((target, node.lineno))
            found += [(target + [alias.name], node.lineno) for alias in node.names if alias.name != "*"]
    return found


def part_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> ``["file:line", ...]`` where the import is, self-imports left out."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        source = _part(_module_name(path, root))
        if source is None:  # the package's own __init__.py: it may import every part
            continue
        graph.setdefault(source, {})
        for target, line in imported_modules(path, root):
            part = _part(target)
            if part is None or part == source:
                continue
            if len(target) == 2 and not (root / part).is_dir() and not (root / f"{part}.py").is_file():
                continue  # `from .. import name` of a name, not a module, in the package's __init__
            graph[source].setdefault(part, []).append(f"{path.relative_to(root.parent)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or None if it is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _describe(graph, cycle: list[str]) -> str:
    return "\n".join(f"  {a} -> {b}: {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:]))


def test_the_package_is_found():
    graph = part_graph()
    assert {"models", "io", "training", "cli", "data"} <= set(graph), sorted(graph)


def test_no_import_cycle_between_parts():
    graph = part_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}:\n{_describe(graph, cycle)}"


#: What may import the command line: itself, and ``python -m resnet_bottleneck``'s entry point.
CLI_USERS = {"cli", "__main__"}


def test_no_part_imports_the_cli():
    graph = part_graph()
    users = {part: where["cli"] for part, where in graph.items() if "cli" in where and part not in CLI_USERS}
    assert not users, users
    assert "cli" in graph.get("__main__", {})  # the check sees the one import it allows


# The checker's own tests: on small trees written here, it sees what it must.


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, cycle",
    [
        # a function-level relative import closes the cycle
        (
            {
                "__init__.py": "",
                "a/__init__.py": "def f():\n    from ..b import g\n",
                "b/__init__.py": "from ..a import f\n",
            },
            ["a", "b", "a"],
        ),
        # absolute imports and `from .. import x` of a module, three parts round
        (
            {
                "__init__.py": "",
                "a.py": "import resnet_bottleneck.b\n",
                "b.py": "from . import c\n",
                "c/__init__.py": "",
                "c/d.py": "def f():\n    from .. import a\n",
            },
            ["a", "b", "c", "a"],
        ),
        # no cycle: a chain, and the package's __init__ importing everything
        (
            {
                "__init__.py": "from .a import x\nfrom .b import y\n",
                "a.py": "from .b import y\n",
                "b.py": "import numpy\n",
            },
            None,
        ),
    ],
)
def test_the_checker_finds_cycles(tmp_path, files, cycle):
    root = _tree(tmp_path, files)
    found = find_cycle(part_graph(root))
    if cycle is None:
        assert found is None
    else:
        assert found is not None and set(found) == set(cycle) and len(found) == len(cycle), found


def test_the_checker_sees_imports_anywhere(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "x/__init__.py": "",
            "x/y.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from ..cli import main\n"
                "class C:\n    def m(self):\n        import resnet_bottleneck.io.onnx\n"
                "        from ...resnet_bottleneck_other import z\n"
            ),
            "cli/__init__.py": "",
            "io/__init__.py": "",
            "io/onnx.py": "",
        },
    )
    assert set(part_graph(root)["x"]) == {"cli", "io"}
