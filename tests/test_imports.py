"""The packages' imports, read from the source (every import statement, also inside functions,
and importlib.import_module of a constant name): no circle, no module importing another's
private name, and actadd's layers kept: the method never imports an experiment, the Dask module
never imports a task and no task imports the Dask module, minigpt never imports actadd."""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minigpt", "actadd")

# actadd's experiments (actadd.experiments): the tasks, and the module that runs their units on Dask.
TASKS = {f"actadd.experiments.{m}" for m in ("generation", "likelihood", "overhead", "paper")}
DASK = "actadd.experiments.dask"
# The one module that names experiments from the top level: old module paths kept for a release
# (importlib.import_module of the new path, on first use). It imports nothing else of actadd.
MOVED = "actadd.moved"
ENTRY_POINTS = {"actadd.cli", "actadd.__main__", MOVED}    # above both layers


def module_files(root: Path, packages) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def read_imports(root: Path, packages):
    """{module: [(imported module, name or None, line)]} for imports within `packages`: `name` is
    what `from module import name` takes when it is not itself a module."""
    files = module_files(root, packages)
    found = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges += [(a.name, None, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")
                    parent = parent[:len(parent) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    edges.append((full, None, node.lineno) if full in files else (base, a.name, node.lineno))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                edges.append((node.args[0].value, None, node.lineno))
        found[module] = [(target, name, line) for target, name, line in edges if target.split(".")[0] in packages]
        found[module] += [(target, attr, line) for target, attr, line in _attributes(tree, edges, files)]
    return files, found


def _attributes(tree, edges, files):
    """`mod._name` where `mod` was bound by an import of a module of the packages."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = a.name if a.asname else a.name.split(".")[0]
                if target in files:
                    bound[a.asname or a.name.split(".")[0]] = target
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                target = next((t for t, n, line in edges if line == node.lineno and (t.endswith("." + a.name))), None)
                if target in files:
                    bound[a.asname or a.name] = target
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in bound:
                continue
            module = bound[value.id]
            for attr in chain:
                if f"{module}.{attr}" in files:
                    module = f"{module}.{attr}"
                    continue
                yield module, attr, node.lineno
                break


def private(name) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def problems(root: Path = ROOT, packages=PACKAGES) -> list[str]:
    files, found = read_imports(root, packages)
    out = []
    graph = {m: sorted({t for t, _, _ in edges if t in files and t != m}) for m, edges in found.items()}
    for m, edges in found.items():
        for target, name, line in edges:
            if private(name) and target != m:
                out.append(f"{files[m].relative_to(root)}:{line}: {m} uses {target}.{name}, a private name")
    for component, cycle in _cycles(graph):
        out.append("import circle: " + " -> ".join(cycle + [cycle[0]]) + f" (modules in circles with each other: "
                   f"{', '.join(component)})")
    return out


def _cycles(graph: dict[str, list[str]]) -> list[tuple[list[str], list[str]]]:
    """(the modules, one cycle through them) per strongly connected component of more than one
    module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append((sorted(component), _path_within(graph, sorted(component))))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path_within(graph, component):
    """A cycle through the component's first module, for the message."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph.get(v, ()):
                if w == start:
                    return paths[v]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


# ---------------------------------------------------------------------------------------------


def test_no_circle_and_no_private_name_across_modules():
    assert problems() == []


def test_actadd_layers():
    files, found = read_imports(ROOT, PACKAGES)
    experiments = {m for m in files if m.startswith("actadd.experiments")}
    assert TASKS <= experiments and DASK in experiments, sorted(experiments)
    method = {m for m in files if m.startswith("actadd") and m not in experiments | ENTRY_POINTS}
    wrong = []
    for m, edges in found.items():
        targets = {t for t, _, _ in edges}
        if m in method:
            wrong += [f"the method's {m} imports the experiment {t}" for t in sorted(targets & experiments)]
        if m == DASK:
            wrong += [f"the Dask module imports the task {t}" for t in sorted(targets & TASKS)]
        if m in TASKS and DASK in targets:
            wrong.append(f"the task {m} imports the Dask module")
        if m.startswith("minigpt"):
            wrong += [f"minigpt's {m} imports {t}" for t in sorted(t for t in targets if t.startswith("actadd"))]
        if m == MOVED:
            wrong += [f"{MOVED} imports {t} (it may only name old modules' new homes)" for t, name, _ in edges
                      if not t.startswith("actadd.experiments") and t not in ("actadd.output", "actadd.provenance")]
    assert wrong == []


def test_the_checker_finds_a_circle_through_a_function_and_a_private_import(tmp_path):
    """The checks can fail: a circle closed only by an import inside a function, a private name
    taken by `from`, and one reached as an attribute of an imported module."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(textwrap.dedent("""
        from .b import helper

        def f():
            from . import c
            return c.g()
    """))
    (package / "b.py").write_text("def helper():\n    pass\n\ndef _secret():\n    pass\n")
    (package / "c.py").write_text(textwrap.dedent("""
        import pkg.b as b

        def g():
            from .a import f
            return b._secret()
    """))
    (package / "d.py").write_text("from pkg.b import _secret\n")
    found = problems(tmp_path, ("pkg",))
    assert "import circle: pkg.a -> pkg.c -> pkg.a (modules in circles with each other: pkg.a, pkg.c)" in found
    assert any("pkg.d uses pkg.b._secret" in p for p in found)
    assert any("pkg.c uses pkg.b._secret" in p for p in found)
    assert len(found) == 3, found
