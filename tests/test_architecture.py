"""The layers of docs/architecture.md, checked: no import from a higher layer, no cycle between packages.

Every module of servescope/ is parsed (ast); every import counts, also those inside functions
(a lazy import is still a dependency). Layers, low to high:

    run < kernels < record < patches < analysis < export < report < bench < overhead, studies, demo < cli

A module may import its own layer and those below. servescope/__init__.py and __main__.py may
import anything (lazily). ``from servescope import __version__`` is allowed everywhere;
``import servescope`` (for ``servescope.instrument``) counts as an import of patches/.
Packages (every folder with modules) must form no cycle, and neither may modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "servescope"

LAYERS = ("run", "kernels", "record", "patches", "analysis", "export", "report", "bench",
          ("overhead", "studies", "demo"), "cli")
FREE = {"servescope", "servescope.__main__"}  # the package's front door may import anything
ROOT_NAMES_OF = {"__version__": None, "instrument": "patches", "uninstrument": "patches"}  # None: no layer

# Violations on the recording side (record/, patches/, kernels/, overhead/: the lead's). Each is
# listed so the lead can remove it; the test fails on any violation not listed here, and on a
# listed one that is gone (so this set only shrinks).
KNOWN_VIOLATIONS: set[str] = set()  # none left: add one only with the reason beside it


def layer_rank() -> dict[str, int]:
    """Return top-level folder (or module) name -> layer number, low to high."""
    ranks = {}
    for rank, layer in enumerate(LAYERS):
        for name in (layer if isinstance(layer, tuple) else (layer,)):
            ranks[name] = rank
    return ranks


def module_name(path: Path, root: Path) -> str:
    """Return the dotted module name of a file under root's parent (servescope/...)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """Return (imported servescope module, line) for every import in the file, function-level ones included."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == root.name:  # from servescope import X: X is a module or a name of the root
                found += [(f"{base}.{alias.name}" if alias.name not in ROOT_NAMES_OF else f"{base}:{alias.name}",
                           node.lineno) for alias in node.names]
            else:
                found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return [(target, line) for target, line in found if target.split(".")[0].split(":")[0] == root.name]


def resolve(target: str, modules: set[str]) -> str | None:
    """Return the servescope module an import target names (the longest existing prefix), or the root name form."""
    if ":" in target:
        return target
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def layer_of(module: str, ranks: dict[str, int], *, imported: bool = False) -> int | None:
    """Return the layer of a module, as importer or as imported (None: the free front door, the version)."""
    if ":" in module:
        owner = ROOT_NAMES_OF.get(module.split(":")[1])
        return None if owner is None else ranks[owner]
    if module == "servescope" and imported:
        return ranks["patches"]  # import servescope: for servescope.instrument / uninstrument
    if module in FREE:
        return None
    return ranks.get(module.split(".")[1])


def import_graph(root: Path) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Return module -> [(imported servescope module, line)] for every module under root, and module -> its package."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph, package = {}, {}
    for name, path in files.items():
        package[name] = name if path.name == "__init__.py" or path.parent == root else name.rpartition(".")[0]
        edges = []
        for target, line in imports_of(path, root):
            resolved = resolve(target, set(files))
            if resolved is not None and resolved != name:
                edges.append((resolved, line))
        graph[name] = edges
    return graph, package


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle (as a closed path) per strongly connected group of more than one node."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [closed_path(group, edges) for group in groups]


def closed_path(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """Return a cycle through the group's first node (breadth-first, shortest)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    return group


def violations(root: Path) -> set[str]:
    """Return every upward import and every package or module cycle under root, one line each."""
    ranks = layer_rank()
    graph, package = import_graph(root)
    found = set()
    for module, edges in graph.items():
        own = layer_of(module, ranks)
        for target, line in edges:
            theirs = layer_of(target, ranks, imported=True)
            if own is not None and theirs is not None and theirs > own:
                found.add(f"upward import: {module} (line {line}) -> {target.replace(':', '.')}")
    module_edges = {m: {t for t, _ in e if t in package and t not in FREE} for m, e in graph.items() if m not in FREE}
    package_edges = defaultdict(set)
    for module, targets in module_edges.items():
        for target in targets:
            if package[target] != package[module]:
                package_edges[package[module]].add(package[target])
    found |= {"package cycle: " + " -> ".join(c) for c in cycles(package_edges)}
    found |= {"module cycle: " + " -> ".join(c) for c in cycles(module_edges)}
    return found


def unplaced_folders(root: Path) -> list[str]:
    """Return top-level folders and modules of root that no layer names."""
    ranks = layer_rank()
    names = {p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    names |= {p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return sorted(names - set(ranks))


# --------------------------------------------------------------------------- the checks


def test_no_upward_import_and_no_cycle_beyond_the_known_ones():
    found = violations(PACKAGE)
    new = sorted(found - KNOWN_VIOLATIONS)
    fixed = sorted(KNOWN_VIOLATIONS - found)
    assert not new, "imports against docs/architecture.md's layers:\n" + "\n".join(new)
    assert not fixed, "no longer violated: remove from KNOWN_VIOLATIONS:\n" + "\n".join(fixed)


def test_every_folder_has_a_layer():
    assert unplaced_folders(PACKAGE) == [], "add it to LAYERS here and to docs/architecture.md"


def test_the_architecture_document_names_every_layer():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for name in layer_rank():
        assert f"`{name}/`" in text or f"`{name}.py`" in text, name


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Write a fake servescope package (relative path -> source) under root; return its folder."""
    package = root / "servescope"
    for relative, source in {"__init__.py": "", **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_the_checker_finds_upward_lazy_relative_and_root_imports_and_cycles(tmp_path):
    package = write_package(tmp_path, {
        "run/__init__.py": "",
        "run/names.py": "from servescope import __version__\n",  # allowed
        "run/schema.py": "def f():\n    from servescope.analysis.summary import g\n",  # lazy, upward
        "analysis/__init__.py": "",
        "analysis/summary.py": "from ..run import names\nfrom servescope.bench import x\n",  # relative ok; upward
        "bench/__init__.py": "",
        "bench/x.py": "import servescope\n",  # patches-level: allowed (bench > patches)
        "export/__init__.py": "",
        "export/a.py": "from servescope.export import b\n",
        "export/b.py": "def f():\n    from servescope.export.a import y\n",  # module cycle
        "report/__init__.py": "",
        "report/r.py": "from servescope import instrument\n",  # patches-level: allowed (report > patches)
        "record/__init__.py": "",
        "record/rec.py": "import servescope\n",  # patches-level: upward from record
    })
    assert violations(package) == {
        "upward import: servescope.run.schema (line 2) -> servescope.analysis.summary",
        "upward import: servescope.analysis.summary (line 2) -> servescope.bench.x",
        "upward import: servescope.record.rec (line 1) -> servescope",
        "package cycle: servescope.analysis -> servescope.run -> servescope.analysis",  # summary -> names, schema -> summary
        "module cycle: servescope.export.a -> servescope.export.b -> servescope.export.a",
    }
    (package / "newfolder").mkdir()
    (package / "newfolder" / "m.py").write_text("")
    assert unplaced_folders(package) == ["newfolder"]
