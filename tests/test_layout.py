"""The package's shape: no import cycle inside affaccel/ (function-local imports included), and
dependencies that point one way: config <- ops/nn <- stages/inference <- command lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "affaccel"
CLIS = {"affaccel.train", "affaccel.finetune", "affaccel.extract", "affaccel.predict",
        "affaccel.ablate", "affaccel.submit"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the installed package: affaccel/ plus kernels/ (as affaccel.kernels)."""
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    for p in (PKG.parent / "kernels").glob("*.py"):
        mods["affaccel.kernels" + ("" if p.stem == "__init__" else "." + p.stem)] = p
    return mods


def _resolve(name: str, modules: dict) -> str | None:
    """The affaccel module an imported dotted name lands in (its longest module prefix)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in modules:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> affaccel modules it imports anywhere in its body (top level or in functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from affaccel.x import y` imports affaccel.x.y when y is a submodule, else
                # affaccel.x (the longest module prefix below)
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                hit = _resolve(t, modules)
                if hit is not None and hit != mod:
                    graph[mod].add(hit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}   # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_local_and_relative_imports():
    g = import_graph()
    # affaccel.bundle imports the temporal model inside a function only
    assert "affaccel.nn.temporal" in g["affaccel.bundle"]
    # affaccel/video/__init__.py imports `.._lazy` relatively
    assert "affaccel._lazy" in g["affaccel.video"]


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# layer of each part of the package; an import may only go to the same or a lower layer
LAYERS = [
    ("config", {"affaccel.config", "affaccel.tasks", "affaccel.env", "affaccel._lazy",
                "affaccel._ext", "affaccel.io_utils", "affaccel.device"}),
    ("core", {"affaccel.metrics", "affaccel.segments", "affaccel.plots", "affaccel.distributed",
              "affaccel.ops", "affaccel.nn", "affaccel.kernels", "affaccel.data", "affaccel.video",
              "affaccel.faces", "affaccel.bundle", "affaccel.emoclip"}),
    ("inference", {"affaccel.inference"}),
    ("stages", {"affaccel.stages", "affaccel.emoclip.data", "affaccel.emoclip.fit", "affaccel.emoclip.evaluate",
                "affaccel.emoclip.datasets"}),
    ("cli", CLIS | {"affaccel.info", "affaccel", "affaccel.cli_checks", "affaccel.cli_encoder", "affaccel.predict_jobs",
                    "affaccel.emoclip.train", "affaccel.emoclip.zeroshot", "affaccel.emoclip.embed"}),
]


def _layer(mod: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        pytest.fail(f"module {mod} has no layer in tests/test_layout.py:LAYERS")
    return best[0]


def test_dependencies_point_down():
    bad = [f"{m} ({LAYERS[_layer(m)][0]}) imports {n} ({LAYERS[_layer(n)][0]})"
           for m, deps in import_graph().items() for n in deps
           if _layer(n) > _layer(m) and not (m == "affaccel" and n in CLIS)]
    assert not bad, "imports that point up:\n" + "\n".join(sorted(bad))


def test_config_module_imports_no_torch():
    tree = ast.parse((PKG / "config.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"torch", "numpy", "open_clip", "triton"}, names


def test_clis_are_thin():
    """Each command line is argparse plus calls into stages/inference: no training loop there."""
    for mod in CLIS:
        src = (PKG / (mod.split(".")[1] + ".py")).read_text()
        tree = ast.parse(src)
        funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert len(src.splitlines()) < 200, f"{mod}: {len(src.splitlines())} lines"
        assert all(n.end_lineno - n.lineno < 80 for n in funcs), mod
