#!/usr/bin/env python3
"""Lists import circles between the modules of each crate.

A module `a` depends on `b` when a's code (comments aside) names
`crate::b` (or, in the root package's binary, `arbor::b`). Prints each strongly connected group of
more than one module, and exits 1 if there is any: `tools/module-cycles.py`
is the check that dependencies inside a crate point one way.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def crates():
    yield "arbor", ROOT / "crates" / "arbor"
    for d in sorted((ROOT / "crates").iterdir()):
        if d.name != "arbor" and (d / "src").is_dir():
            yield d.name, d / "src"


def graph(src):
    modules = {p.stem: p for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
    edges = {m: set() for m in modules}
    pattern = re.compile(r"\b(?:crate|arbor)::(\w+)")
    for m, path in modules.items():
        # Doc links and comments are not dependencies.
        code = "\n".join(
            line.split("//")[0] for line in path.read_text().splitlines()
            if not line.lstrip().startswith("//")
        )
        for other in pattern.findall(code):
            if other in modules and other != m:
                edges[m].add(other)
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    found = False
    for name, src in crates():
        for group in cycles(graph(src)):
            found = True
            print(f"{name}: {' <-> '.join(group)}")
    if not found:
        print("no import circles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
