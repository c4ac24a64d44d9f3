"""The package's import arrows run one way: recipes -> evals -> core, and inside the core no
cycle. Lazy imports inside functions count too (an arrow is an arrow)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "interventions"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Our modules that ``path`` imports anywhere in its body (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {n for n in names if n in modules} - {module_name(path)}


GRAPH = {module_name(p): imported(p) for p in PACKAGE.rglob("*.py")}
CORE = sorted(
    m for m in GRAPH if not m.startswith(("interventions.recipes", "interventions.evals"))
)


def test_the_graph_reads_real_imports():
    assert "interventions.attach" in GRAPH["interventions.stats"]
    assert "interventions.ops" in GRAPH["interventions.attach"]


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_recipes_or_evals(module):
    upward = {
        m for m in GRAPH[module] if m.startswith(("interventions.recipes", "interventions.evals"))
    }
    if module == "interventions.cli":  # the command line is the top: it runs a recipe
        upward -= {"interventions.recipes", "interventions.recipes.head_scores"}
    assert not upward, f"{module} imports {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("interventions.evals")))
def test_evals_never_import_recipes(module):
    assert not {m for m in GRAPH[module] if m.startswith("interventions.recipes")}


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if m.startswith("interventions.adapters"))
)
def test_adapters_import_only_adapters_and_checks(module):
    allowed = ("interventions.adapters", "interventions.checks")
    assert all(m.startswith(allowed) for m in GRAPH[module]), GRAPH[module]


def test_no_cycles_among_our_modules():
    # the package's __init__ files re-export their children: an arrow parent -> child is not a cycle
    def arrows(module: str) -> set[str]:
        return {m for m in GRAPH[module] if not m.startswith(module + ".")}

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(arrows(module)):
            if module.startswith(nxt + ".") or module == nxt:
                continue  # a child importing names from its own package's __init__
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path[path.index(nxt) :], module, nxt]))
            if nxt not in state:
                visit(nxt, [*path, module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
