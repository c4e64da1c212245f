"""The layout holds: each layer imports only layers below it, and no two modules share a name."""
from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Layer -> what it may import (itself included). Lower layers never import higher ones, so no folder
# imports back into one that imports it. A layer is a top-level package or, for the emulator, the
# subpackage the library itself must never depend on.
MAY_IMPORT: dict[str, set[str]] = {
    "gpuops": {"gpuops"},                                  # the library: planners, adapters
    "gpuops.emulator": {"gpuops", "gpuops.emulator"},      # local stand-ins, on top of the library
    "gpuops.rollout": {"gpuops", "gpuops.rollout"},        # the canary engine and backends, on the library
    "gpuops.hub": {"gpuops", "gpuops.hub"},                # the hub: intake, outbox, routing, dispatch
    "blocks": {"gpuops", "blocks"},                        # Prefect Block classes
    "flows": {"gpuops", "gpuops.rollout", "blocks", "flows"},  # Prefect flows and tasks
    "gpuops_cli": {"gpuops", "gpuops.emulator", "gpuops.rollout", "gpuops.hub", "blocks", "flows",  # entry points
                   "gpuops_cli"},
    "deployments": {"gpuops", "blocks", "flows", "deployments"},
    "workers": {"gpuops", "workers"},                      # worker types on prefect-gcp's (GPUOPS_CLOUD_RUN_API)
    "benchmarks": {"gpuops", "gpuops.emulator", "gpuops.rollout", "gpuops.hub", "blocks", "flows", "gpuops_cli",
                   "benchmarks"},
}
# Known to the checker so that importing them is caught; nothing outside tests may import tests.
OTHER_PROJECT_PACKAGES = {"tests"}
SKIPPED_DIRS = {"tests", "__pycache__"}


def layer_of(module: str) -> str | None:
    """The most specific layer a dotted module name belongs to (None: not project code)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in MAY_IMPORT or prefix in OTHER_PROJECT_PACKAGES:
            return prefix
    return None


def project_files() -> list[Path]:
    files = []
    for top in sorted(MAY_IMPORT):
        if "." in top:
            continue
        files += [p for p in sorted((ROOT / top).rglob("*.py"))
                  if not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)]
    return files


def imported_modules(path: str, source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a module, lazy and relative ones included.

    `from a import b` yields `a.b`, so that `from gpuops import emulator` is seen for what it is.
    """
    package = Path(path).parent.parts
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(path: str, source: str) -> list[str]:
    """`path:line imports X` for each import a module's layer may not make."""
    own = layer_of(".".join(Path(path).with_suffix("").parts))
    if own is None:
        return [f"{path}: not in any layer; add its package to MAY_IMPORT in {Path(__file__).name}"]
    bad = []
    for line, name in imported_modules(path, source):
        target = layer_of(name)
        if target is not None and target not in MAY_IMPORT[own]:
            bad.append(f"{path}:{line} imports {name}: {own} may import only {', '.join(sorted(MAY_IMPORT[own]))}")
    return bad


def test_every_layer_imports_only_layers_below_it():
    bad = []
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        bad += violations(rel, path.read_text(encoding="utf-8"))
    assert not bad, "imports against the layout (README, Layout):\n" + "\n".join(bad)


def test_the_check_names_the_file_and_the_import():
    source = "import json\nfrom gpuops import cloudrun\n\ndef f():\n    from flows.common import Target\n"
    assert violations("gpuops/example.py", source) == [
        "gpuops/example.py:5 imports flows.common.Target: gpuops may import only gpuops"]
    assert violations("blocks/example.py", "from gpuops_cli import cli\n") == [
        "blocks/example.py:1 imports gpuops_cli.cli: blocks may import only blocks, gpuops"]
    # Relative imports resolve to their package; the library may not depend on the emulator.
    assert violations("gpuops/rollout/example.py", "from ..emulator import router\n") == [
        "gpuops/rollout/example.py:1 imports gpuops.emulator.router: gpuops.rollout may import only gpuops, "
        "gpuops.rollout"]
    assert violations("gpuops/cleanup_plan.py", "from gpuops.rollout import engine\n") == [
        "gpuops/cleanup_plan.py:1 imports gpuops.rollout.engine: gpuops may import only gpuops"]
    assert violations("gpuops/emulator/example.py", "from . import router\nfrom gpuops import retry\n") == []
    assert violations("flows/example.py", "importlib.import_module('gpuops_cli.cli')\n") == [
        "flows/example.py:1 imports gpuops_cli.cli: flows may import only blocks, flows, gpuops, gpuops.rollout"]


def test_every_top_level_python_folder_has_a_layer():
    folders = {d.name for d in ROOT.iterdir()
               if d.is_dir() and not d.name.startswith(".") and next(d.rglob("*.py"), None) is not None}
    unknown = sorted(folders - set(MAY_IMPORT) - OTHER_PROJECT_PACKAGES)
    assert not unknown, f"folders with Python code but no layer: {unknown}; add them to MAY_IMPORT"


def test_module_names_are_unique_across_packages():
    by_name = collections.defaultdict(list)
    for path in project_files():
        if path.stem not in ("__init__", "__main__"):
            by_name[path.name].append(path.relative_to(ROOT).as_posix())
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, "modules sharing a name across folders: " + "; ".join(
        f"{name}: {', '.join(paths)}" for name, paths in sorted(shared.items()))
