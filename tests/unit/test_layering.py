"""The dependency rule, enforced (see ``docs/architecture.md``).

Every ``import`` / ``from`` statement of ``vitskip_env/``, ``agents/``, ``analysis/`` and ``train/`` is
read with :mod:`ast` (also those inside functions and under ``if TYPE_CHECKING:``), relative imports
are resolved, and a name taken from a package ``__init__`` is followed to the module that defines it
(``from ..model import SkippableViT`` is an edge to ``vitskip_env.model.backbone``; a name of the lazy
face is followed through its ``_LAZY`` table). On that graph:

- between wings: a module imports only lower ranks or its own wing (:data:`RANKS`; siblings of one
  rank never import each other), and the wings form no cycle;
- inside a wing: no cycle between its modules (an import of the wing's own ``__init__`` from inside
  the wing is left out: the ``__init__`` only re-exports), and no chain of imports that run (not
  ``TYPE_CHECKING`` ones) in ``vitskip_env`` is longer than :data:`MAX_LEVELS` imports;
- nothing outside a package imports a private (``_name``) module inside it;
- the face ``vitskip_env/__init__.py`` imports wings only under ``TYPE_CHECKING`` (it names them as
  strings), and ``analysis`` loads neither torch, timm, SB3 nor ``agents`` when imported.

The checker functions take plain edge lists, so the tests at the end prove on synthetic graphs that
each rule fails when broken.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("vitskip_env", "agents", "analysis", "train")
FACE = "vitskip_env"

#: Wing -> rank. A module may import a lower rank or its own wing; equal ranks are siblings.
RANKS: dict[str, int] = {
    "face": -1,  # ``vitskip_env/__init__.py``: ids and lazy names; imports no wing at run time
    "files": 0,
    "runtime": 0,
    "data": 1,
    "model": 1,
    "observations": 2,
    "rules": 2,
    "env": 3,
    "deploy": 3,
    "measure": 4,
    "analysis": 5,  # pure pandas/matplotlib over files: the agents reuse its statistics and front format
    "agents": 6,
}
#: Longest import chain inside ``vitskip_env``, in imports (a module that imports no other is level 0).
MAX_LEVELS = 6
#: Top-level packages that importing ``analysis`` must not load (torch, timm, SB3 and the agents).
HEAVY = ("torch", "timm", "stable_baselines3", "sb3_contrib", "torchvision", "agents")


@dataclass(frozen=True)
class Import:
    """One imported module of one statement: ``source`` imports ``target`` (both dotted names)."""

    source: str
    target: str
    where: str  # "path:line"
    text: str  # the statement, on one line
    in_function: bool = False
    type_checking: bool = False
    loads: tuple[str, ...] = ()  # modules Python runs for it (the target, its packages, the ``from`` module)

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


# ---------------------------------------------------------------------------------------------------------
# Reading the tree


def _walk(tree: ast.AST, in_function: bool = False, type_checking: bool = False):
    """Yield ``(node, in_function, type_checking)`` for every import statement under ``tree``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function, type_checking
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                yield from _walk(ast.Module(body=[child], type_ignores=[]), in_function, True)
            for child in node.orelse:
                yield from _walk(ast.Module(body=[child], type_ignores=[]), in_function, type_checking)
        else:
            func = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _walk(node, in_function or func, type_checking)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def scan(root: Path = ROOT, packages: tuple[str, ...] = PROJECT) -> tuple[list[Import], set[str], set[str]]:
    """Every import of the project's modules: ``(edges, modules, packages)``.

    Project targets are resolved to the module that defines the name; third-party targets keep their
    dotted name. ``packages`` are the modules that are a package ``__init__``.
    """
    files: dict[str, tuple[Path, bool]] = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    pkgs = {name for name, (_, is_pkg) in files.items() if is_pkg}
    trees = {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in files.items()}

    def absolute(name: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if name in pkgs else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    # What each package __init__ re-exports (name -> (module, name)); the face's lazy table.
    reexports: dict[str, dict[str, tuple[str, str]]] = {p: {} for p in pkgs}
    for pkg in pkgs:
        for node, in_func, tc in _walk(trees[pkg]):
            if isinstance(node, ast.ImportFrom) and not (in_func or tc):
                for alias in node.names:
                    reexports[pkg][alias.asname or alias.name] = (absolute(pkg, node), alias.name)
    if FACE in trees:
        for node in trees[FACE].body:
            if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_LAZY" and node.value is not None:
                for name, module in ast.literal_eval(node.value).items():
                    reexports[FACE][name] = (module, name)

    def resolve(module: str, name: str, depth: int = 0) -> str:
        if f"{module}.{name}" in files:
            return f"{module}.{name}"
        if module in reexports and name in reexports[module] and depth < 10:
            origin, orig_name = reexports[module][name]
            return resolve(origin, orig_name, depth + 1) if origin in pkgs else origin
        return module

    edges: list[Import] = []
    for name, tree in trees.items():
        path, _ = files[name]
        source = path.read_text()
        for node, in_func, tc in _walk(tree):
            text = " ".join((ast.get_source_segment(source, node) or ast.unparse(node)).split())
            where = f"{path.relative_to(root).as_posix()}:{node.lineno}"
            if isinstance(node, ast.Import):
                pairs = [(alias.name, alias.name) for alias in node.names]
            else:
                base = absolute(name, node)
                top = base.split(".")[0]
                pairs = [(base, resolve(base, a.name) if top in packages else base) for a in node.names if a.name != "*"]
            for loaded, target in dict.fromkeys(pairs):
                loads = tuple(dict.fromkeys([*_ancestors(loaded), *_ancestors(target)]))
                edges.append(Import(name, target, where, text, in_func, tc, loads))
    return edges, set(files), pkgs


# ---------------------------------------------------------------------------------------------------------
# The checks (pure functions of an edge list; each returns the violations as readable lines)


def wing_of(module: str) -> str | None:
    """The wing a project module belongs to (``"face"`` for the package face), ``None`` outside."""
    parts = module.split(".")
    if parts[0] == FACE:
        return "face" if len(parts) == 1 else parts[1]
    return parts[0] if parts[0] in ("agents", "analysis") else None


def internal(edges: list[Import], prefix: str = FACE) -> list[Import]:
    """Edges between two modules under ``prefix`` (``vitskip_env``: between its wings and modules)."""

    def inside(m: str) -> bool:
        return m == prefix or m.startswith(prefix + ".")

    return [e for e in edges if inside(e.source) and inside(e.target) and e.source != e.target]


def rank_violations(edges: list[Import], ranks: dict[str, int] = RANKS) -> list[str]:
    """Imports of a sibling or a higher rank, and wings that have no rank yet."""
    out = []
    for e in edges:
        src, dst = wing_of(e.source), wing_of(e.target)
        if src is None or dst is None or src == dst or src == "face":
            continue
        for wing in (src, dst):
            if wing not in ranks:
                out.append(f"{e}  ({wing!r} has no rank: add it to RANKS and docs/architecture.md)")
        if src in ranks and dst in ranks and ranks[dst] >= ranks[src]:
            kind = "its sibling" if ranks[dst] == ranks[src] else "a higher rank"
            out.append(f"{e}  ({src}, rank {ranks[src]}, imports {kind} {dst}, rank {ranks[dst]})")
    return out


def face_violations(edges: list[Import]) -> list[str]:
    """The face imports wings only under ``TYPE_CHECKING`` (lazy names are strings)."""
    return [
        f"{e}  (the face must not import a wing at run time; add the name to _LAZY instead)"
        for e in edges
        if e.source == FACE and wing_of(e.target) not in (None, "face") and not e.type_checking
    ]


def private_violations(edges: list[Import]) -> list[str]:
    """Imports of a project's ``_private`` module from outside the package that holds it."""
    out = []
    for e in edges:
        parts = e.target.split(".")
        if parts[0] not in PROJECT:
            continue
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if e.source != owner and not e.source.startswith(owner + "."):
                    out.append(f"{e}  ({e.target} is private to {owner}; import its public name from {owner})")
                break
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a directed graph: its strongly connected components with a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph(pairs) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in pairs:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    return graph


def _cycle_lines(edges: list[Import], node) -> list[str]:
    graph = _graph((node(e.source), node(e.target)) for e in edges)
    out = []
    for comp in cycles(graph):
        lines = [f"  {e}" for e in edges if node(e.source) in comp and node(e.target) in comp]
        out.append(f"cycle {' <-> '.join(comp)}:\n" + "\n".join(lines))
    return out


def wing_cycles(edges: list[Import]) -> list[str]:
    """Cycles between wings, each wing one node (the face's ``TYPE_CHECKING`` names left out)."""
    between = [
        e for e in edges if None not in (wing_of(e.source), wing_of(e.target)) and wing_of(e.source) != wing_of(e.target)
    ]
    return _cycle_lines([e for e in between if wing_of(e.source) != "face"], wing_of)


def inner_edges(edges: list[Import], packages: set[str]) -> list[Import]:
    """Edges between two modules of one wing, without imports of a package ``__init__`` from inside it."""
    return [
        e
        for e in edges
        if wing_of(e.source) not in (None, "face")
        and wing_of(e.source) == wing_of(e.target)
        and e.source != e.target
        and not (e.target in packages and e.source.startswith(e.target + "."))
    ]


def module_cycles(edges: list[Import], packages: set[str]) -> list[str]:
    """Cycles between the modules of one wing."""
    return _cycle_lines(inner_edges(edges, packages), lambda m: m)


def longest_chain(edges: list[Import]) -> list[str]:
    """The longest import chain (modules, importer first) of an acyclic graph."""
    graph = _graph((e.source, e.target) for e in edges)
    best: dict[str, list[str]] = {}

    def chain(v: str, seen: frozenset[str]) -> list[str]:
        if v not in best:
            tails = [chain(w, seen | {v}) for w in sorted(graph[v]) if w not in seen]
            best[v] = [v, *max(tails, key=len, default=[])]
        return best[v]

    return max((chain(v, frozenset()) for v in sorted(graph)), key=len, default=[])


def chain_violations(edges: list[Import], packages: set[str], max_levels: int = MAX_LEVELS) -> list[str]:
    """The longest import chain, when it has more than ``max_levels`` imports.

    Only imports that run count (not those under ``TYPE_CHECKING``). Package ``__init__``s only
    re-export, so they start no chain; edges inside a cycle are left to the cycle checks.
    """
    edges = [e for e in edges if e.source not in packages and wing_of(e.source) != "face" and not e.type_checking]
    loops = [set(c) for c in cycles(_graph((e.source, e.target) for e in edges))]
    chain = longest_chain([e for e in edges if not any({e.source, e.target} <= c for c in loops)])
    levels = len(chain) - 1
    if levels <= max_levels:
        return []
    return [f"{levels} levels of imports (at most {max_levels}): " + " -> ".join(chain)]


def heavy_loads(edges: list[Import], module: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The shortest chain of module-level imports by which importing ``module`` loads a package of ``heavy``."""
    by_source: dict[str, list[Import]] = {}
    for e in edges:
        if not (e.in_function or e.type_checking):
            by_source.setdefault(e.source, []).append(e)
    came_from: dict[str, tuple[str, Import] | None] = {module: None}
    queue = [module]
    for m in queue:  # breadth first: the shortest chain
        steps = [e for runs in reversed(_ancestors(m)) for e in by_source.get(runs, ())]  # a.b.c runs a.b.c, a.b, a
        for e in steps:
            chain = [str(e)]
            if any(loaded.split(".")[0] in heavy for loaded in e.loads):
                at = m
                while came_from[at] is not None:
                    at, via = came_from[at]
                    chain.insert(0, str(via))
                return chain
            for loaded in e.loads:
                if loaded not in came_from:
                    came_from[loaded] = (m, e)
                    queue.append(loaded)
    return []


# ---------------------------------------------------------------------------------------------------------
# The project's tree

EDGES, MODULES, PACKAGES = scan()
RUNTIME = [e for e in EDGES if not (e.source == FACE and e.type_checking)]


def _fail(title: str, lines: list[str]) -> str:
    return title + ":\n" + "\n".join(lines)


def test_the_scan_sees_the_wings() -> None:
    assert {"vitskip_env.model.backbone", "vitskip_env.env.core", "agents", "analysis.frames"} <= MODULES
    resolved = {e.target for e in EDGES if e.source == "vitskip_env.env.core"}
    assert "vitskip_env.model.backbone" in resolved  # `from ..model import SkippableViT` followed to its home


def test_each_module_imports_only_lower_ranks_or_its_own_wing() -> None:
    bad = rank_violations(RUNTIME)
    assert not bad, _fail("imports against the dependency rule", bad)


def test_the_face_imports_wings_only_for_type_checkers() -> None:
    bad = face_violations(EDGES)
    assert not bad, _fail("the lazy face imports a wing", bad)


def test_no_cycle_between_wings() -> None:
    bad = wing_cycles(internal(RUNTIME))
    assert not bad, _fail("wings import each other", bad)


def test_no_cycle_between_the_modules_of_a_wing() -> None:
    bad = module_cycles(RUNTIME, PACKAGES)
    assert not bad, _fail("modules of one wing import each other", bad)


def test_import_chains_in_vitskip_env_are_short() -> None:
    bad = chain_violations(internal(RUNTIME), PACKAGES)
    assert not bad, _fail("import chain too long", bad)


def test_no_private_module_is_imported_from_outside_its_package() -> None:
    bad = private_violations(EDGES)
    assert not bad, _fail("private modules imported from outside", bad)


def test_analysis_loads_no_torch_agents_or_sb3() -> None:
    bad = {m: chain for m in sorted(MODULES) if wing_of(m) == "analysis" and (chain := heavy_loads(EDGES, m))}
    assert not bad, _fail("importing analysis loads a heavy package", [f"{m}: " + " -> ".join(c) for m, c in bad.items()])


#: Run in a fresh interpreter: what ``import vitskip_env`` loads and registers, then one env step.
FACE_PROBE = """
import json, sys, gymnasium as gym, vitskip_env
out = {"heavy": sorted(m for m in ("torch", "timm") if m in sys.modules)}
out["missing"] = sorted(i for i in vitskip_env.ENV_IDS if i not in gym.registry)
out["ids"] = len(vitskip_env.ENV_IDS)
try:
    env = gym.make("ViTSkip-Shapes-v0", backbone="micro", backbone_weights="random", num_images=16, split="test", device="cpu")
    env.reset(seed=0)
    out["step"] = repr(env.step(1)[1])
except Exception as exc:
    out["step"] = None
    out["error"] = repr(exc)
print(json.dumps(out))
"""


def probe_face(root: Path = ROOT) -> dict:
    """Import ``vitskip_env`` from ``root`` in a fresh process (see :data:`FACE_PROBE`)."""
    proc = subprocess.run([sys.executable, "-c", FACE_PROBE], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_is_light_and_registers_every_id() -> None:
    found = probe_face()
    assert found["heavy"] == [], f"`import vitskip_env` loads {found['heavy']} (vitskip_env/__init__.py must stay lazy)"
    assert found["missing"] == [] and found["ids"] >= 4, f"ids not registered on import: {found['missing']}"
    assert found["step"] is not None, f"gym.make('ViTSkip-Shapes-v0', backbone='micro', ...) failed: {found.get('error')}"


# ---------------------------------------------------------------------------------------------------------
# The checker fails when a rule is broken (synthetic graphs)


def _e(source: str, target: str, **kw) -> Import:
    return Import(source, target, f"{source.replace('.', '/')}.py:1", f"import {target}", **kw)


def test_checker_catches_deploy_importing_env() -> None:
    bad = rank_violations([_e("vitskip_env.deploy.dynamic", "vitskip_env.env.core")])
    assert len(bad) == 1 and "deploy/dynamic.py:1" in bad[0] and "sibling" in bad[0]
    assert rank_violations([_e("vitskip_env.model.backbone", "vitskip_env.observations")])  # upwards
    assert rank_violations([_e("vitskip_env.widgets", "vitskip_env.files")])  # a wing without a rank
    ok = [_e("vitskip_env.env.core", "vitskip_env.model.backbone"), _e("agents.export", "vitskip_env.deploy.policy")]
    assert not rank_violations([*ok, _e("vitskip_env.env.options", "vitskip_env.env.core"), _e("analysis.x", FACE)])


def test_checker_catches_cycles() -> None:
    loop = [_e("vitskip_env.model.a", "vitskip_env.model.b"), _e("vitskip_env.model.b", "vitskip_env.model.a")]
    bad = module_cycles(loop, set())
    assert len(bad) == 1 and "model/a.py:1" in bad[0] and "model/b.py:1" in bad[0]
    # A module taking a name from its own wing's __init__ is no cycle; wings importing each other are.
    assert not module_cycles([_e("vitskip_env.data.real", "vitskip_env.data")], {"vitskip_env.data"})
    assert wing_cycles([_e("vitskip_env.data.a", "vitskip_env.model.b"), _e("vitskip_env.model.c", "vitskip_env.data.d")])
    assert cycles({"a": {"a"}}) == [["a"]] and cycles({"a": {"b"}, "b": set()}) == []


def test_checker_catches_long_chains_and_private_imports() -> None:
    chain = [_e(f"vitskip_env.m{i}", f"vitskip_env.m{i + 1}") for i in range(MAX_LEVELS + 1)]
    assert len(longest_chain(chain)) == MAX_LEVELS + 2
    assert chain_violations(chain, set()) and not chain_violations(chain[1:], set())
    assert not chain_violations([replace(chain[0], type_checking=True), *chain[1:]], set())
    assert not chain_violations([_e("vitskip_env.env", "vitskip_env.env.a"), *chain[1:]], {"vitskip_env.env"})
    bad = private_violations([_e("agents.export", "vitskip_env.data._npz"), _e("train.rl", "vitskip_env._io")])
    assert len(bad) == 2 and "private to vitskip_env.data" in bad[0]
    inside = [_e("vitskip_env.data.real", "vitskip_env.data._npz"), _e("analysis.a", "analysis._io")]
    assert not private_violations([*inside, _e("vitskip_env.model.fileformat", "torch.utils._device")])


def test_checker_catches_the_face_or_analysis_loading_heavy_packages() -> None:
    assert face_violations([_e(FACE, "vitskip_env.env.core")])
    assert not face_violations([_e(FACE, "vitskip_env.env.core", type_checking=True)])
    edges = [
        _e("analysis.frames", "vitskip_env.model", loads=("vitskip_env", "vitskip_env.model")),
        _e("vitskip_env.model", "torch", loads=("torch",)),
    ]
    chain = heavy_loads(edges, "analysis.frames")
    assert len(chain) == 2 and "import torch" in chain[1]
    assert not heavy_loads([replace(edges[0], in_function=True), edges[1]], "analysis.frames")


def test_scan_resolves_relative_and_reexported_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "vitskip_env"
    (pkg / "deploy").mkdir(parents=True)
    (pkg / "env").mkdir()
    (pkg / "__init__.py").write_text("_LAZY: dict[str, str] = {'Thing': 'vitskip_env.env'}\n")
    (pkg / "env" / "__init__.py").write_text("from .core import Thing\n")
    (pkg / "env" / "core.py").write_text("Thing = 1\n")
    (pkg / "deploy" / "__init__.py").write_text("")
    (pkg / "deploy" / "dynamic.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..env import Thing\n"
        "def f():\n    from vitskip_env import Thing\n"
    )
    edges, _, _ = scan(tmp_path, ("vitskip_env",))
    mine = [e for e in edges if e.source == "vitskip_env.deploy.dynamic" and e.target.startswith(FACE)]
    assert [(e.target, e.type_checking, e.in_function) for e in mine] == [
        ("vitskip_env.env.core", True, False),
        ("vitskip_env.env.core", False, True),
    ]
    assert len(rank_violations(mine)) == 2 and "deploy/dynamic.py:3" in rank_violations(mine)[0]


def test_probe_catches_a_face_that_loads_torch(tmp_path: Path) -> None:
    (tmp_path / "vitskip_env").mkdir()
    (tmp_path / "vitskip_env" / "__init__.py").write_text("import torch\nENV_IDS = {'ViTSkip-Nowhere-v0': 'shapes'}\n")
    found = probe_face(tmp_path)
    assert found["heavy"] == ["torch"] and found["missing"] == ["ViTSkip-Nowhere-v0"]
