"""The package's imports form a ladder: each module imports only its own rung or lower ones,
and no module is part of an import cycle (lazy imports inside functions count too)."""

import ast
from pathlib import Path

from etl_assets_tests.repo import REPO

PACKAGE = REPO / "etl_assets"
# Lowest first: the data contract, the warehouse, the services (no Dagster), the Dagster
# definitions, the code location, then what runs it: the demo, the tenant API, the CLI.
LADDER = [
    ("contract", ("etl_assets.contract",)),
    ("warehouse", ("etl_assets.warehouse",)),
    ("services", ("etl_assets.services", "etl_assets.samples")),
    ("defs", ("etl_assets.defs",)),
    ("code location", ("etl_assets.definitions",)),
    ("demo", ("etl_assets.demo",)),
    ("tenant API", ("etl_assets.api",)),
    ("command line", ("etl_assets.cli",)),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the package but its (empty) top `__init__`."""
    found = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if name != "etl_assets"}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` names a module; `from module import name` does not.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def _rung(module: str) -> int:
    for index, (_name, prefixes) in enumerate(LADDER):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            return index
    raise AssertionError(f"{module} is on no rung of the ladder: add it to LADDER")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_every_import_goes_down_the_ladder_or_stays_on_its_rung() -> None:
    upward = sorted(
        f"{module} ({LADDER[_rung(module)][0]}) imports {imported} ({LADDER[_rung(imported)][0]})"
        for module, imports in _graph().items()
        for imported in imports
        if _rung(imported) > _rung(module)
    )

    assert upward == []


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])

    assert cycles == []


def test_services_and_warehouse_import_no_dagster() -> None:
    lower = [
        path for name, path in _modules().items() if _rung(name) <= _rung("etl_assets.services")
    ]
    with_dagster = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in lower
        if any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                (getattr(node, "module", None) or alias.name).split(".")[0]
                in ("dagster", "dagster_celery")
                for alias in node.names
            )
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    )

    assert with_dagster == []
