"""The layout's rules, checked on the source (docs/ARCHITECTURE.md): each layer imports only the
layers below it, a family's task never imports another family's, and no two modules import each
other in a circle (imports inside functions count: they were how cycles used to be hidden)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gptlab

PACKAGE = Path(gptlab.__file__).parent
# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = ["errors", "settings", "model", "data", "checkpoint", "infer", "training", "explain", "api", "serve", "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The gptlab modules `path` imports, anywhere in it (a `from pkg import submodule` counts as the submodule)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gptlab"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gptlab")}
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def test_layers_import_only_downwards():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        mine = _layer(name)
        for other in _imports(path, modules):
            theirs = _layer(other)
            if mine is None or theirs is None:
                continue
            assert mine in LAYERS and theirs in LAYERS, f"{name} or {other} is in no layer: add it to LAYERS and the docs"
            if LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{name} imports {other}")
    assert not wrong, wrong


def test_families_never_import_each_other():
    modules = _modules()
    tasks = {m for m in modules if m.startswith("gptlab.training.tasks.")}
    sideways = [f"{m} imports {o}" for m in tasks for o in _imports(modules[m], modules) if o in tasks and o != m]
    assert not sideways, sideways


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {o for o in _imports(p, modules) if o in modules and o != m} for m, p in modules.items()}
    # Importing one's own parent package (e.g. `from gptlab import __version__`) adds nothing:
    # Python has imported every parent package before the module itself.
    for m in graph:
        graph[m] = {o for o in graph[m] if not m.startswith(o + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for o in graph[m]:
            if state.get(o) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(o):] + [o]))
            if o not in state:
                visit(o, path + [o])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_checkpoint_kinds_are_one_explicit_table():
    from gptlab.checkpoint import KINDS
    assert set(KINDS) == {"gpt", "encoder", "classifier", "seq2seq", "reward", "gpt-value", "image"}


def test_model_package_imports_only_torch():
    """No tokenizer, file formats or other libraries in the model: torch and the standard library."""
    allowed = {"torch", "gptlab", *sys.stdlib_module_names} - {"pickle", "json", "os", "pathlib", "io", "urllib", "socket"}
    for p in (PACKAGE / "model").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert n.split(".")[0] in allowed, f"{p.name} imports {n}"
                assert not n.startswith("gptlab") or n.startswith("gptlab.model"), f"{p.name} imports {n}"
