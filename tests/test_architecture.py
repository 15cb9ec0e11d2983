"""The package's layout: imports run one way (no cycle, function-local imports included), and the seam is one way."""

from __future__ import annotations

import ast
from pathlib import Path

import dyncot_plugin

ROOT = Path(dyncot_plugin.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (top level or inside functions).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; the implicit import of a
    parent package (``a`` when importing ``a.b``) is not an edge.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("dyncot_plugin"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "dyncot_plugin.train.workflow" in graph["dyncot_plugin.patches"]
    assert cycles(graph) == []


def test_the_seam_runs_one_way():
    graph = import_graph()
    assert graph["dyncot_plugin._bootstrap"] == {"dyncot_plugin.patches"}
    webui = {m for m in graph if m.startswith("dyncot_plugin.webui.")}
    assert graph["dyncot_plugin.patches"] - webui == {"dyncot_plugin.config", "dyncot_plugin.train.workflow",
                                                      "dyncot_plugin.chat", "dyncot_plugin.export"}
    # LlamaBoard's parts: one module per tab, wired only through the seam
    assert graph["dyncot_plugin.patches"] & webui == {"dyncot_plugin.webui.locales", "dyncot_plugin.webui.train",
                                                      "dyncot_plugin.webui.evaluate", "dyncot_plugin.webui.chat",
                                                      "dyncot_plugin.webui.runner"}
    for module, imports in graph.items():  # the web UI sits on top: only the seam and the test helpers reach it
        if not module.startswith(("dyncot_plugin.webui", "dyncot_plugin.patches", "dyncot_plugin.testing")):
            assert not {i for i in imports if i.startswith("dyncot_plugin.webui")}, module
    for module, imports in graph.items():  # nothing reaches back into the seam
        if module not in ("dyncot_plugin", "dyncot_plugin._bootstrap"):
            assert not imports & {"dyncot_plugin._bootstrap", "dyncot_plugin.patches"}, module


def test_layers_import_downwards_only():
    """The shared core (config, strategies, cot_format, think, io, validate) never imports the training code, the tasks, the teacher or
    the CLI; the tasks never import the training code."""
    graph = import_graph()
    core = ("dyncot_plugin.config", "dyncot_plugin.strategies", "dyncot_plugin.cot_format", "dyncot_plugin.think",
            "dyncot_plugin.io", "dyncot_plugin.validate")
    upper = ("dyncot_plugin.train", "dyncot_plugin.tasks", "dyncot_plugin.teacher", "dyncot_plugin.cli",
             "dyncot_plugin.chat", "dyncot_plugin.export")
    for module, imports in graph.items():
        if module.startswith(core):
            assert not {i for i in imports if i.startswith(upper)}, module
        if module.startswith("dyncot_plugin.tasks"):
            assert not {i for i in imports if i.startswith(("dyncot_plugin.train", "dyncot_plugin.teacher"))}, module
        if module.startswith("dyncot_plugin.train"):  # the chat front ends sit on top of the training code
            assert "dyncot_plugin.chat" not in imports, module


def test_serve_runs_without_llamafactory_and_the_training_code():
    """dyncot_plugin.serve runs in a vLLM venv without LLaMA-Factory: it imports neither it nor train/, the tasks,
    the teacher or the CLI; nothing below it imports serve."""
    graph = import_graph()
    serve = {m for m in graph if m.startswith("dyncot_plugin.serve")}
    assert {"dyncot_plugin.serve.predict", "dyncot_plugin.serve.logits", "dyncot_plugin.serve.recipe"} <= serve
    banned = ("dyncot_plugin.train", "dyncot_plugin.tasks", "dyncot_plugin.teacher", "dyncot_plugin.cli",
              "dyncot_plugin.patches", "dyncot_plugin.testing")
    for module in serve:
        assert not {i for i in graph[module] if i.startswith(banned)}, module
        source = _modules()[module].read_text(encoding="utf-8")
        tree = ast.parse(source)
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in ("llamafactory", "deepspeed", "peft")}, module
    core = ("dyncot_plugin.config", "dyncot_plugin.strategies", "dyncot_plugin.cot_format", "dyncot_plugin.io",
            "dyncot_plugin.think", "dyncot_plugin.train", "dyncot_plugin.tasks")
    for module, imports in graph.items():
        if module.startswith(core):
            assert not {i for i in imports if i.startswith("dyncot_plugin.serve")}, module
