"""The project's modules import each other without a circle (issue #29): every import counts, also one inside a
function (the data/invert.py <-> data/prepare.py circle was such a lazy import)."""
import ast
import subprocess

from conftest import ROOT


def project_modules():
    """{module name: path} of the project's own Python files (those git tracks or would track), tests included"""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    mods = {}
    for rel in files.stdout.split():
        name = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        mods[name] = ROOT / rel
    return mods


def imports_of(path, mods):
    """The project modules `path` imports, anywhere in the file"""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]  # `from eval import mc` -> eval.mc
        else:
            continue
        for name in names:
            while name and name not in mods:  # `import data.prepare` -> data.prepare; `import x.y.z` -> nearest module
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def cycles(graph):
    """The strongly connected components of more than one module, and self-imports (Tarjan), each sorted"""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}) == [["a", "b", "c"], ["d", "e"]]


def test_no_import_circle_among_the_project_modules():
    mods = project_modules()
    assert {"data.prepare", "data.invert", "data.records", "eval.mc", "train", "sweep", "util"} <= set(mods)
    graph = {name: imports_of(path, mods) for name, path in mods.items()}
    assert "data.records" in graph["data.invert"] and "data.invert" in graph["data.prepare"]  # the edges are seen
    assert cycles(graph) == []
