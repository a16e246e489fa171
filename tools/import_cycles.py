"""Fail when modules of a package import each other in a cycle (lazy imports inside functions
included): `python tools/import_cycles.py scibox_operator`."""

from __future__ import annotations

import sys

import grimp


def cycles(package: str) -> list[list[str]]:
    graph = grimp.build_graph(package)
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for module in modules:
        if module not in index:
            visit(module)
    return found


if __name__ == "__main__":
    found = cycles(sys.argv[1])
    for component in found:
        print("import cycle:", " <-> ".join(component), file=sys.stderr)
    raise SystemExit(1 if found else 0)
