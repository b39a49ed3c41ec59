#!/usr/bin/env python3
"""Fails when a crate's top-level modules import each other in a circle.

For every crate (src/, guest/src, crates/*/src, xtask/src) each file belongs to a
top-level module (a.rs and a/**); a reference `crate::b` or `super::b` outside comments
is an edge a -> b. Prints each cycle and exits 1 if there is any.
Usage: scripts/check-module-cycles.py [ROOT]
"""
import os
import re
import sys

REF = re.compile(r"\b(?:crate|super)::(?:\{([^}]*)\}|(\w+))")


def top_module(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return None if name in ("lib", "main") else name


def edges(src):
    graph = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            mod = top_module(src, path)
            if mod is None:
                continue
            graph.setdefault(mod, set())
            nested = os.path.dirname(path) != src
            for line in open(path, encoding="utf-8"):
                code = line.split("//", 1)[0]
                for group, single in REF.findall(code):
                    names = [single] if single else [n.strip().split("::")[0] for n in group.split(",")]
                    if "super::" in code and nested:
                        continue  # super inside a module's own folder stays inside it
                    for n in names:
                        if n and n != mod and n != "self":
                            graph[mod].add(n)
    return {m: {t for t in ts if t in graph} for m, ts in graph.items()}


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    srcs = [os.path.join(root, "src"), os.path.join(root, "guest", "src"), os.path.join(root, "xtask", "src")]
    crates = os.path.join(root, "crates")
    srcs += [os.path.join(crates, c, "src") for c in sorted(os.listdir(crates))]
    bad = 0
    for src in srcs:
        if not os.path.isdir(src):
            continue
        for c in cycles(edges(src)):
            bad += 1
            print(f"{os.path.relpath(src, root)}: module cycle {' -> '.join(c)}")
    if bad:
        sys.exit(1)
    print("no module import cycles")


main()
