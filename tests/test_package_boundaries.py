"""The packages' boundaries (docs/architecture.md), read from the source with ast.

- pose_bridge imports neither bpy nor torch, nor the other two packages: both sides use it.
- blender_addon never imports torch, and the backend only in the in-process runner, which
  Blender uses when its own Python has torch.
- Within blender_addon, the module-level imports form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base)
                target = f"{base}.{node.module}" if node.module else base
                if node.module is None:  # from . import a, b: the submodules
                    found.update(f"{target}.{alias.name}" for alias in node.names)
                else:
                    found.add(target)
            else:
                found.add(node.module)
    return found


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_pose_bridge_needs_neither_blender_nor_torch():
    for path in python_files("pose_bridge"):
        forbidden = top_level(imports(path)) & {"bpy", "torch", "diffusers", "animate_backend", "blender_addon"}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_the_add_on_never_imports_torch_and_the_backend_only_in_process():
    for path in python_files("blender_addon"):
        used = top_level(imports(path))
        assert not used & {"torch", "diffusers", "transformers"}, f"{path.relative_to(ROOT)} imports torch-side code"
        if "animate_backend" in used:
            assert path == ROOT / "blender_addon" / "connection" / "inprocess.py", path.relative_to(ROOT)


def test_the_add_on_has_no_import_cycle():
    modules = {module_name(p): p for p in python_files("blender_addon")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path, module_level_only=True):
            # "from .x import y" may name a module x.y or a name y of module x.
            for candidate in (imported, imported.rpartition(".")[0]):
                if candidate in modules and candidate != name:
                    targets.add(candidate)
                    break
        graph[name] = targets

    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(name):] + [name])
        visiting.append(name)
        for target in sorted(graph[name]):
            if target != "blender_addon":  # a package's __init__ is imported before its modules anyway
                visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
