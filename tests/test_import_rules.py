"""The import rules of the packages (docs/development.md, "Layering"), checked statically.

Every ``.py`` file of ``dicom_io/``, ``medxai/``, ``pipelines/`` and ``atomicfs/`` is parsed with
:mod:`ast`; nothing is imported, so the test is fast and sees imports that run only on some paths.
*Every* ``import`` statement counts: module level, inside functions (lazy imports), and under
``if TYPE_CHECKING:``. A lazy import still ties the layers together (the lower module cannot be
used or tested without the upper one), so it obeys the same rules.

How an import becomes an edge ``importer -> imported``: ``import a.b.c`` and ``from a.b.c import d``
name the module ``a.b.c`` (or the sub-module ``a.b.c.d`` when that exists); relative imports are
resolved against the importer's package. An edge goes to the most specific module of the four
packages that exists, not to its parent packages (``from medxai.explainers.base import X`` is an edge
to ``medxai.explainers.base`` only), the way import-linter and grimp count them.
``importlib.import_module(<string constant>)`` counts too; a computed name cannot be seen (so the
registry's walk over ``medxai.explainers``, which registers the methods, is not an edge).

Rules
-----
1. ``dicom_io`` never imports torch (nor the libraries built on it: monai, diffusers, captum,
   torchvision), ``medxai`` or ``pipelines``.
2. ``medxai`` never imports ``dicom_io`` or ``pipelines``.
3. ``atomicfs`` imports only the standard library.
4. The building blocks of ``medxai`` (networks, training, diffusion, transforms, metrics, phantoms, biomarkers)
   never import ``medxai.explainers``: explainers sit on top of them.
5. ``pipelines.bench`` never imports the CLI layer (``pipelines.cli``, ``pipelines.commands``).
6. No import cycle among the modules of ``medxai`` (nor of the other three packages): each strongly
   connected component of the import graph with more than one module is reported with its edges and
   line numbers.
7. Private names stay private. A name starting with ``_`` (not a dunder) is
   - *module-private* when it is an attribute of a module (``from pipelines.explain_dr import
     _dvce_config``): no other module imports it, siblings included;
   - *package-private* when it is a module (``pipelines/commands/_options.py``): only modules of
     exactly that package (the same folder, and the package's ``__init__``) import it or names from
     it; a sub-package or a parent package does not.
   Anything else that needs the name needs it public: rename it (and document it), or move it to a
   module both sides import. Only imports of our four packages are checked. tests/ is not scanned:
   a test may reach into the private names of the module it tests.
8. The ``medxai/`` root holds only what every method shares (``MEDXAI_ROOT``); a new module there
   is a decision, so it has to be added to that list with its reason.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dicom_io", "medxai", "pipelines", "atomicfs")
# torch and the libraries that import it when imported
TORCH_STACK = ("torch", "torchvision", "monai", "diffusers", "captum")
MEDXAI_BUILDING_BLOCKS = (
    "medxai.networks",
    "medxai.training",
    "medxai.diffusion",
    "medxai.transforms",
    "medxai.metrics",
    "medxai.phantoms",
    "medxai.biomarkers",
)
CLI_LAYER = ("pipelines.cli", "pipelines.commands")
# what every method shares; method-specific modules live with their kind (networks.agent, ...)
MEDXAI_ROOT = frozenset(
    {
        "medxai",  # __init__
        "medxai.config",  # config loading, paths relative to the config file
        "medxai.data",  # model-ready phantom arrays (training, bench, benchmarks)
        "medxai.explanation",  # the typed result and its on-disk layout
        "medxai.progress",  # the one progress-callback type (training, loading, explaining)
        "medxai.registry",  # the method registry
        "medxai.targets",  # what an explainer explains
        "medxai.trust",  # which model classes a config may import
    }
)


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the full dotted path (``a.b`` for ``from a import b``)."""

    importer: str  # dotted module name of the importing file
    path: str  # file, relative to the repository root
    line: int
    target: str  # e.g. "medxai.explainers.base.find_layer" or "torch"
    module: str  # the module named by the statement ("medxai.explainers.base"; "torch")

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[_module_name(path)] = path
    return files


FILES = _files()
MODULES = frozenset(FILES)


def _is_package(module: str) -> bool:
    return FILES[module].name == "__init__.py"


def _package_of(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    if module in FILES and _is_package(module):
        return module
    return module.rpartition(".")[0]


def _resolve_relative(importer: str, level: int, module: str | None) -> str:
    base = _package_of(importer).split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, rel, node.lineno, alias.name, alias.name))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                target = source if alias.name == "*" else f"{source}.{alias.name}"
                found.append(Import(module, rel, node.lineno, target, source))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
        ):
            name = node.args[0].value
            if not name.startswith("."):
                found.append(Import(module, rel, node.lineno, name, name))
    return found


IMPORTS: dict[str, list[Import]] = {m: _imports_of(m, p) for m, p in FILES.items()}


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(imp: Import) -> str | None:
    """The most specific module of our packages that ``imp`` names, or None for other libraries."""
    name = imp.target
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _offenders(importers: tuple[str, ...] | str, imported: tuple[str, ...] | str) -> list[str]:
    return sorted(
        f"{imp.where()}: {imp.importer} imports {imp.target}"
        for module, imports in IMPORTS.items()
        if _within(module, importers)
        for imp in imports
        if _within(imp.target, imported)
    )


def _fail_if(offenders: list[str], rule: str, what: str = "import(s)") -> None:
    if offenders:
        pytest.fail(f"{rule}; {len(offenders)} {what} break it:\n  " + "\n  ".join(offenders), pytrace=False)


def test_the_scan_sees_the_packages() -> None:
    # guards the test itself: a wrong root or pattern would make every rule pass vacuously
    assert {"dicom_io.reader", "medxai.explainers.base", "medxai.targets", "pipelines.bench", "atomicfs"} <= MODULES
    assert any(imp.target == "medxai.explanation.Explanation" for imp in IMPORTS["medxai.explainers.base"])
    lazy = _imports_of("medxai.explainers", FILES["medxai.explainers"])
    assert all(imp.target.startswith(("__future__", "importlib", "typing")) for imp in lazy)


def test_dicom_io_never_imports_torch_medxai_or_pipelines() -> None:
    _fail_if(
        _offenders("dicom_io", (*TORCH_STACK, "medxai", "pipelines")),
        "dicom_io must not import torch (or monai, diffusers, captum, torchvision), medxai or pipelines",
    )


def test_medxai_never_imports_dicom_io_or_pipelines() -> None:
    _fail_if(
        _offenders("medxai", ("dicom_io", "pipelines")),
        "medxai must not import dicom_io or pipelines (pipelines/ joins the two)",
    )


def test_atomicfs_imports_only_the_standard_library() -> None:
    offenders = sorted(
        f"{imp.where()}: {imp.importer} imports {imp.target}"
        for module, imports in IMPORTS.items()
        if _within(module, "atomicfs")
        for imp in imports
        if _top(imp.target) not in sys.stdlib_module_names and _top(imp.target) != "atomicfs"
    )
    _fail_if(offenders, "atomicfs must import only the standard library")


def test_medxai_building_blocks_never_import_explainers() -> None:
    _fail_if(
        _offenders(MEDXAI_BUILDING_BLOCKS, "medxai.explainers"),
        "networks, training, diffusion, transforms, metrics and phantoms must not import medxai.explainers "
        "(explainers are built on them; move what both need below, e.g. medxai.networks.layers)",
    )


def test_bench_never_imports_the_cli_layer() -> None:
    _fail_if(
        _offenders("pipelines.bench", CLI_LAYER),
        "pipelines.bench must not import the CLI layer (pipelines.cli, pipelines.commands); "
        "move what it needs into a pipelines module both import",
    )


def test_medxai_root_holds_only_shared_modules() -> None:
    root = {m for m in MODULES if m.count(".") == 1 and m.startswith("medxai.") and not _is_package(m)} | {"medxai"}
    _fail_if(
        sorted(root - MEDXAI_ROOT),
        "the medxai/ root holds only what every method shares; put a method-specific module with its kind "
        "(medxai.networks, .diffusion, .training, ...) or add it to MEDXAI_ROOT with the reason",
        "module(s)",
    )


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small but recursion depth is not ours to choose)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            if children:
                child = children.pop()
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_strongly_connected_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(map(sorted, _strongly_connected(graph))) == [["a", "b", "c"], ["d"], ["e"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES if _within(m, package)}
    lines: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module in graph:
        for imp in IMPORTS[module]:
            target = _resolve(imp)
            if target is not None and target != module and target in graph:
                graph[module].add(target)
                lines[module, target].add(imp.where())
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    report = []
    for component in cycles:
        members = set(component)
        edges = [
            f"    {a} -> {b} ({', '.join(sorted(lines[a, b]))})" for a in component for b in sorted(graph[a]) if b in members
        ]
        report.append(f"{' <-> '.join(component)}:\n" + "\n".join(edges))
    _fail_if(report, f"{package}'s modules must not import each other in a cycle (lazy imports included)", "cycle(s)")


def _private_violation(importer: str, target: str) -> str | None:
    """Why importing ``target`` from ``importer`` breaks rule 7, or None if it does not."""
    parts = target.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if not part.startswith("_") or (part.startswith("__") and part.endswith("__")):
            continue
        name, owner = ".".join(parts[: i + 1]), ".".join(parts[:i])
        if name in MODULES:  # a private module: private to its package
            if _package_of(importer) != owner:
                return f"private module {name} of package {owner}"
        elif owner in MODULES and importer != owner:  # a private attribute: private to its module
            return f"private name {parts[i]} of module {owner}"
    return None


def test_private_names_stay_private() -> None:
    offenders = sorted(
        f"{imp.where()}: {module} imports {why}"
        for module, imports in IMPORTS.items()
        for imp in imports
        if _top(imp.target) in PACKAGES and (why := _private_violation(module, imp.target)) is not None
    )
    _fail_if(
        offenders,
        "a private name is imported only by its own module (a private module: only by its own package); "
        "make it public or move it to a module both sides import",
    )


def test_private_rule_examples() -> None:
    assert _private_violation("pipelines.bench", "pipelines.explain._read_ct") is not None
    assert _private_violation("pipelines.commands.explain", "pipelines.commands._options.trust_code_option") is None
    assert _private_violation("pipelines.bench", "pipelines.commands._options.trust_code_option") is not None
    assert _private_violation("medxai.phantoms", "medxai.phantoms._common.case_seed") is None
    assert _private_violation("medxai.explainers.gradcam", "medxai.explainers.base.Explainer") is None
    assert _private_violation("medxai.explainers.gradcam", "medxai.explainers.base.__all__") is None
