"""The package's layers, read from the source with ``ast`` (nothing is imported).

Data flows one way: bytes -> container -> engine -> tree -> tools -> command.  Each
subpackage imports only from itself and the layers below it, no module-level imports go
round in a cycle, and an import inside a function is either an optional dependency or a
module kept off the common path on purpose, saying why in a ``# lazy:`` comment.  The
README's "How it is built" section shows the same table.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ptfile"

#: The layers, bottom first: each may import only from itself and the layers before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("ptfile.errors", "ptfile.constants")),
    ("io", ("ptfile.io",)),
    ("containers", ("ptfile.containers",)),
    ("pickle", ("ptfile.pickle",)),
    ("tensors", ("ptfile.tensors",)),
    ("policy", ("ptfile.policy",)),
    ("formats", ("ptfile.formats",)),
    ("scanning", ("ptfile.scanning",)),
    ("tools", ("ptfile.tools",)),
    ("api", ("ptfile", "ptfile.torch")),  # the package facade and ptfile.torch
    ("cli", ("ptfile.cli", "ptfile.__main__")),
)

#: What a function may import, and why it is not imported with its module.
LAZY_IMPORTS = {
    "fsspec": "optional dependency (ptfile[remote])",
    "jax": "optional dependency (ptfile[jax])",
    "mlx": "optional dependency (ptfile[mlx])",
    "torch": "optional dependency (ptfile[torch])",
    "distributed": "optional dependency (ptfile[fleet])",
    "py7zr": "optional dependency (ptfile[archives])",
    "rich": "heavy, and only the command prints with it",
    "bz2": "a codec for rare compressed wrappers",
    "gzip": "a codec for rare compressed wrappers",
    "lzma": "a codec for rare compressed wrappers",
    "ml_dtypes": "only its own element types need it (bfloat16, float8, complex32)",
    "argparse": "only a checkpoint holding an argparse.Namespace needs it",
    "pathlib": "only a checkpoint holding a path needs it",
    "zipfile": "Python's zip reader, only for files that also read as a zip",
    "threading": "only a large file read whole starts reader threads",
    "ptfile.io.atomic": "writing only (imports tempfile)",
    "ptfile.formats.dcp": "DCP folders only",
    "ptfile.formats.legacy": "the pre-1.6 formats only; a zip checkpoint never needs them",
    "ptfile.formats.torchscript": "TorchScript archives only; a zip checkpoint never needs it",
    "ptfile.formats.stformat": "a format reader, imported for files of its format",
    "ptfile.formats.npformat": "a format reader, imported for files of its format",
    "ptfile.formats.sharded": "a format reader, imported for files of its format",
    "ptfile.formats.opener": "every format reader, kept off `import ptfile`",
    "ptfile.formats.writer": "saving only, kept off `import ptfile`",
    "ptfile.scanning.scanner": "scanning only, kept off `import ptfile`",
    "ptfile.tools": "the command imports only the tools it runs",
}

_LAZY_COMMENT = re.compile(r"#\s*lazy:\s*\S")


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency of ``source`` on ``target``."""

    source: str
    target: str
    line: int
    in_function: bool
    reason: bool  # the statement carries a ``# lazy:`` comment

    def where(self) -> str:
        return f"{self.source} (line {self.line})"


def module_names(package: Path) -> dict[str, Path]:
    """Every module under ``package``, by dotted name (``ptfile.formats.loader``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The modules one import statement names, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from package import module`` depends on the module, ``from module import name`` on the module
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names]


def import_edges(package: Path) -> list[Edge]:
    """Every import statement of every module, module-level or inside a function."""
    modules = module_names(package)
    edges = []
    for module, path in modules.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, module: str = module, lines: list = lines,
                  is_package: bool = is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    statement = "\n".join(lines[child.lineno - 1: child.end_lineno])
                    for target in _resolve(module, is_package, child, modules):
                        edges.append(Edge(module, target, child.lineno, in_function,
                                          bool(_LAZY_COMMENT.search(statement))))
                else:
                    visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.Lambda)))

        visit(ast.parse(text, str(path)), False)
    return edges


def internal(edges: list[Edge], modules: dict) -> list[Edge]:
    """The edges between two modules of the package (not to itself, nor to the standard library)."""
    return [e for e in edges if e.target in modules and e.target != e.source]


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer holding ``module`` (the longest prefix wins)."""
    best, length = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def find_cycle(edges: list[Edge]) -> list[str] | None:
    """One cycle of imports (``[a, b, ..., a]``), or None."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = walk(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = walk(start)
            if found:
                return found
    return None


def layer_violations(edges: list[Edge]) -> list[str]:
    """Each import that climbs to a higher layer, said as which edge breaks which rule."""
    broken = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source < 0 or target < 0:
            broken.append(f"{edge.where()} imports {edge.target}: a module outside every layer of LAYERS")
        elif target > source:
            broken.append(f"{edge.where()} imports {edge.target}: layer {LAYERS[source][0]!r} may import "
                          f"only from itself and the layers below it, not from {LAYERS[target][0]!r}")
    return broken


def lazy_violations(edges: list[Edge]) -> list[str]:
    """Each function-level import that is not of an allowed lazy module, or gives no reason."""
    broken = []
    for edge in edges:
        if not edge.in_function:
            continue
        allowed = any(edge.target == name or edge.target.startswith(name + ".") for name in LAZY_IMPORTS)
        if not allowed:
            broken.append(f"{edge.where()} imports {edge.target} inside a function: only optional "
                          f"dependencies and modules listed in LAZY_IMPORTS may be imported there")
        elif not edge.reason:
            broken.append(f"{edge.where()} imports {edge.target} inside a function without a '# lazy: <reason>' "
                          f"comment")
    return broken


# -- the package --------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return module_names(PACKAGE)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(PACKAGE)


def test_the_graph_is_read(modules, edges):
    """The reader finds the imports it must: relative, from a package, and inside functions."""
    pairs = {(e.source, e.target, e.in_function) for e in internal(edges, modules)}
    assert ("ptfile.formats.loader", "ptfile.policy.allowlist", False) in pairs  # from ..policy import allowlist
    assert ("ptfile.formats.opener", "ptfile.formats.dcp", True) in pairs
    assert ("ptfile.cli.main", "ptfile", False) in pairs  # from .. import load, save
    assert len(modules) > 40


def test_every_module_is_in_a_layer(modules):
    assert [m for m in modules if layer_of(m) < 0] == []


def test_no_module_level_import_cycles(modules, edges):
    module_level = [e for e in internal(edges, modules) if not e.in_function]
    cycle = find_cycle(module_level)
    assert cycle is None, "module-level imports go round: " + " -> ".join(cycle or [])


def test_no_import_cycles_even_through_functions(modules, edges):
    """Following any import, lazy ones included, never leads back to where it started."""
    cycle = find_cycle(internal(edges, modules))
    assert cycle is None, "imports go round: " + " -> ".join(cycle or [])


def test_layers_import_only_downward(modules, edges):
    assert layer_violations(internal(edges, modules)) == []


def test_function_level_imports_are_deliberate(edges):
    assert lazy_violations(edges) == []


def test_no_subpackage_hides_a_public_name(modules):
    """Importing ``ptfile.x.y`` sets the attribute ``ptfile.x``: it must not be a name of ``ptfile.__all__``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    public = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets))
    children = {m.split(".")[1] for m in modules if m.count(".") >= 1}
    assert "scan" in public and "load" in public
    assert children & set(public) == set()


def test_readme_shows_the_layers(modules):
    """The README's table lists the layers in this order, each with the modules it holds."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = [re.findall(r"`([^`]+)`", row.split("|")[1]) + re.findall(r"`([^`]+)`", row.split("|")[2])
              for row in rows]
    layers_in_readme = [names[0].rstrip("/").removesuffix(".py") for names in listed]
    assert layers_in_readme == [name for name, _ in LAYERS]
    for (name, prefixes), names in zip(LAYERS, listed, strict=True):
        holds = {m.rsplit(".", 1)[-1] for m in modules if layer_of(m) == layer_of(prefixes[0])
                 and m not in prefixes}
        shown = {n.removesuffix(".py").rstrip("/") for n in names[1:]}
        assert holds <= shown, f"README row {name!r} does not list {sorted(holds - shown)}"


# -- the checks themselves ---------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ptfile"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_and_an_upward_import_are_reported(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "io/__init__.py": "",
        "io/source.py": "from ..formats import loader\n",
        "formats/__init__.py": "",
        "formats/loader.py": "from ..io.source import x\n",
    })
    modules = module_names(root)
    edges = internal(import_edges(root), modules)
    assert find_cycle(edges) in (["ptfile.formats.loader", "ptfile.io.source", "ptfile.formats.loader"],
                                 ["ptfile.io.source", "ptfile.formats.loader", "ptfile.io.source"])
    (broken,) = layer_violations(edges)
    assert broken.startswith("ptfile.io.source (line 1) imports ptfile.formats.loader: layer 'io' may import")


def test_an_unexplained_lazy_import_is_reported(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "formats/__init__.py": "",
        "formats/dcp.py": "",
        "formats/opener.py": ("def a():\n    from .dcp import x  # lazy: folders only\n"
                              "def b():\n    from .dcp import y\n"
                              "def c():\n    import json  # lazy: why not\n"),
    })
    broken = lazy_violations(import_edges(root))
    assert len(broken) == 2
    assert "line 4) imports ptfile.formats.dcp inside a function without a '# lazy: <reason>'" in broken[0]
    assert "line 6) imports json inside a function: only optional" in broken[1]
