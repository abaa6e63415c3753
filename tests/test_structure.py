"""The layout as rules: no import cycle among the project's modules, and the
layers point one way (app.py and pages/ are scripts that import ui/ and
explorer; ui/ imports explorer; explorer imports neither, nor streamlit).

Imports are read with ast, not run: every import counts, also one inside a
function (a deferred import still closes a cycle).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["app.py", "explorer", "ui", "pages", "tools"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files = {}
    for source in SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            files[module_name(file)] = file
    return files


def imported_names(name: str, file: Path) -> set[str]:
    """Every dotted name that the module imports, relative imports resolved."""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
    return found


def project_module(dotted: str, modules) -> str | None:
    """The project module that an imported name loads: its longest known prefix."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    graph = {}
    for name, file in files.items():
        targets = {project_module(d, files) for d in imported_names(name, file)}
        graph[name] = targets - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that starts and ends at the same module, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(path: list[str]) -> list[str] | None:
        state[path[-1]] = "open"
        for nxt in sorted(graph[path[-1]]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(path + [nxt])):
                return cycle
        state[path[-1]] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit([start])):
            return cycle
    return None


def test_the_files_are_found():
    graph = import_graph()
    assert {"app", "explorer.index", "ui.router", "pages.feature"} <= set(graph)
    assert "ui.router" in graph["app"] and "explorer.workspace" in graph["ui.workspace"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_layers_point_one_way():
    graph = import_graph()
    for name, targets in graph.items():
        scripts = {t for t in targets if t == "app" or t.startswith("pages")}
        assert not scripts, f"{name} imports {scripts}: app.py and pages/ are scripts, run by Streamlit"
        if name.startswith("explorer"):
            upward = {t for t in targets if t.startswith("ui")}
            assert not upward, f"{name} imports {upward}: the library must not depend on the app"


def test_the_library_never_imports_streamlit():
    files = project_files()
    for name, file in files.items():
        if name.startswith("explorer"):
            streamlit = {d for d in imported_names(name, file) if d.split(".")[0] == "streamlit"}
            assert not streamlit, f"{file.relative_to(ROOT)} imports {sorted(streamlit)}"
