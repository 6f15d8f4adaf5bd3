"""The import graph of the project's packages: no circles, and the layers.

The composition root (app/) wires the process and nothing imports it; bot/
knows the other packages only by their config sections; the core and cards
know no channel.

Read from the source with `ast`, without importing anything. Every import
statement counts, wherever it is: inside functions (lazy imports) and under
`if TYPE_CHECKING:` too. `from a.b import c` depends on `a.b` (whose package
code runs) and on `a.b.c` when that is a module; `import a.b.c` on `a.b.c`.

    .venv/bin/python -m pytest -q tests/test_imports.py
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "app", "bot", "cards", "console", "escalation", "nlp", "reports", "storage")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package (or its parents)
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if (m := known(target)) is not None:
                    deps.add(m)
                deps.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods)
        deps.discard(name)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_checker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


# The channel kinds: each IM's package, the phone and the webhook subscriptions.
def is_channel(module: str) -> bool:
    return module.startswith("bot.channels") or module in ("escalation.phone", "api.webhooks")


def test_the_core_and_cards_import_no_channel():
    graph = import_graph()
    assert any(is_channel(m) for m in graph) and any(m.startswith("bot.core") for m in graph)
    for module in graph:
        if module.startswith(("bot.core", "cards")):
            reached = reachable(graph, module)
            assert not {m for m in reached if is_channel(m)}, module
            assert not {m for m in reached if m.startswith("app")}, module


def test_nothing_imports_the_composition_root():
    graph = import_graph()
    assert "app.runtime" in graph and "app.web" in graph
    for module, deps in graph.items():
        if not module.startswith("app"):
            assert not {d for d in deps if d == "app" or d.startswith("app.")}, module


def test_bot_knows_the_other_packages_only_by_their_config_sections():
    """The wiring of escalation, the API, the console and the reports lives in app/."""
    graph = import_graph()
    outside = ("api", "console", "escalation", "reports")
    for module, deps in graph.items():
        if module.split(".")[0] != "bot":
            continue
        wired = {d for d in deps if d.split(".")[0] in outside and not d.endswith(".config")}
        assert not wired, (module, wired)


def test_the_layer_checks_see_a_violation():
    graph = {"bot.core.x": {"cards.model"}, "cards.model": {"bot.channels.wecom.adapter"},
             "bot.channels.wecom.adapter": set()}
    assert {m for m in reachable(graph, "bot.core.x") if is_channel(m)} == {"bot.channels.wecom.adapter"}
