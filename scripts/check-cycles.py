#!/usr/bin/env python3
"""Fails when modules of the server crate import each other in a loop.

Every file under src/ is a module (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`). A reference to
`crate::a::b::c` or `super::c` (in a `use` or in code) is an arrow to the longest module that the
path names; a module's own children and `mod` declarations are not arrows. The strongly
connected components of that graph are the cycles: each is printed, with the references that tie
it, and the exit status is 1. Run by scripts/test.sh.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand_use(body):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']"""
    body = body.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", body, flags=re.S)
    if not m:
        return [body.split(" as ")[0].strip()]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, current = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    parts.append(current)
    out = []
    for part in parts:
        if part.strip():
            out.extend(prefix + p if p not in ("self",) else prefix.rstrip(":") for p in expand_use(part))
    return out


modules = {}
for dirpath, _, files in os.walk(ROOT):
    for name in files:
        if name.endswith(".rs"):
            path = os.path.join(dirpath, name)
            modules[module_of(path)] = path

edges = {m: {} for m in modules}
for module, path in modules.items():
    text = strip_comments(open(path, encoding="utf-8").read())
    refs = []
    for use in re.findall(r"\buse\s+([^;]+);", text):
        refs.extend(expand_use(use))
    refs.extend(re.findall(r"\b((?:crate|super)(?:::\w+)+)", text))
    is_dir_module = path.endswith("mod.rs")
    for ref in refs:
        segments = [s for s in ref.replace(" ", "").split("::") if s]
        if not segments:
            continue
        if segments[0] == "crate":
            target = segments[1:]
        elif segments[0] == "super":
            base = list(module if is_dir_module else module[:-1])
            while segments and segments[0] == "super":
                segments = segments[1:]
                if segments and segments[0] == "super":
                    base = base[:-1]
            target = base + segments
        else:
            continue
        # The longest module the path names.
        for n in range(len(target), 0, -1):
            candidate = tuple(target[:n])
            if candidate in modules:
                break
        else:
            continue
        if candidate == module or candidate[: len(module)] == module or module[: len(candidate)] == candidate:
            continue  # itself, a child of its own, or a parent (a folder's mod.rs hands names on)
        edges[module].setdefault(candidate, set()).add("::".join(target))

# Tarjan's strongly connected components.
index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            sccs.append(scc)


sys.setrecursionlimit(10000)
for v in list(edges):
    if v not in index:
        visit(v)

name = lambda m: "::".join(m) or "crate"
if not sccs:
    print(f"no import cycle among {len(modules)} modules of src/")
    sys.exit(0)
for scc in sccs:
    members = set(scc)
    print(f"import cycle of {len(scc)} modules: {', '.join(sorted(name(m) for m in scc))}")
    for m in sorted(scc):
        for target, refs in sorted(edges[m].items()):
            if target in members:
                print(f"  {name(m)} -> {name(target)}: {', '.join(sorted(refs))[:160]}")
sys.exit(1)
