"""Every public module, class and function in backend/ says what it is for (read from the source, ast)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent / "backend"


def _public(name: str) -> bool:
    return not name.startswith("_")


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def _classes(trees: dict[str, ast.Module]) -> dict[str, ast.ClassDef]:
    """Every top-level class in backend/ by name (for documented methods inherited from a base)."""
    return {node.name: node for tree in trees.values() for node in tree.body if isinstance(node, ast.ClassDef)}


def _inherits_doc(cls: ast.ClassDef, method: str, classes: dict[str, ast.ClassDef], seen: set[str]) -> bool:
    # As inspect.getdoc does: an override without a docstring has its base's (here: a base in backend/).
    for name in _base_names(cls):
        base = classes.get(name)
        if base is None or name in seen:
            continue
        seen.add(name)
        for node in base.body:
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name == method
                and ast.get_docstring(node) is not None
            ):
                return True
        if _inherits_doc(base, method, classes, seen):
            return True
    return False


def _missing_in(tree: ast.Module, where: str, classes: dict[str, ast.ClassDef]) -> Iterator[str]:
    if ast.get_docstring(tree) is None:
        yield f"{where}: module"
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if _public(node.name) and ast.get_docstring(node) is None:
            yield f"{where}:{node.lineno}: {node.name}"
        if isinstance(node, ast.ClassDef) and _public(node.name):
            for item in node.body:
                if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) or not _public(item.name):
                    continue
                if ast.get_docstring(item) is None and not _inherits_doc(node, item.name, classes, set()):
                    yield f"{where}:{item.lineno}: {node.name}.{item.name}"


def missing_docstrings(root: Path = BACKEND) -> list[str]:
    """Public modules, classes, functions and methods (not nested functions) without a docstring."""
    trees = {
        str(path.relative_to(root.parent)): ast.parse(path.read_text(), filename=str(path))
        for path in sorted(root.rglob("*.py"))
    }
    classes = _classes(trees)
    return [line for where, tree in trees.items() for line in _missing_in(tree, where, classes)]


def test_every_public_module_class_and_function_has_a_docstring() -> None:
    missing = missing_docstrings()
    assert missing == [], f"{len(missing)} without a docstring:\n" + "\n".join(missing)


def test_the_check_sees_what_is_missing(tmp_path: Path) -> None:
    pkg = tmp_path / "backend"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        '"""A."""\n'
        "def f(): pass\n"  # line 2
        "class Base:\n"
        '    """Base."""\n'
        "    def g(self):\n"
        '        """G."""\n'
        "class C(Base):\n"
        '    """C."""\n'
        "    def g(self): pass\n"  # inherits Base.g's docstring
        "    def h(self): pass\n"  # line 10
        "    def _private(self): pass\n"
        "def _helper(): pass\n"
        "class _Hidden:\n"
        "    def x(self): pass\n"
    )
    (pkg / "b.py").write_text("x = 1\n")
    assert missing_docstrings(pkg) == ["backend/a.py:2: f", "backend/a.py:10: C.h", "backend/b.py: module"]
