"""The package's import graph: one room per step, no circles, imports at the top.

Bugs this catches: a module that imports a later step (step 05 reading step 06's code), science
that imports the pipeline, a circle of imports hidden inside functions, and an import of the
package's own code inside a function (where it hides such a circle)."""

from __future__ import annotations

import ast

from backdoor_sae.common.cache import module_imports, module_path, package_modules

#: Rooms in order: a module may import its own room and earlier ones only.
LAYERS = ("config", "task", "common", "oracle", "dataset", "finetune", "activations", "dictionaries", "scoring",
          "audit", "causal", "dashboards", "pipeline", "__main__")


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_lives_in_a_room():
    assert {room(m) for m in package_modules()} <= {*LAYERS, "__init__"}


def test_no_module_imports_a_later_room():
    wrong = []
    for module in package_modules():
        for imported in module_imports(module):
            if room(module) != "__init__" and LAYERS.index(room(imported)) > LAYERS.index(room(module)):
                wrong.append(f"{module} -> {imported}")
    assert not wrong, wrong


def test_the_import_graph_has_no_cycle():
    # a module's own parent packages are initialised before it runs: importing them is no circle
    graph = {m: {i for i in module_imports(m) if not (m + ".").startswith(i + ".")} for m in package_modules()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


#: Imports that must stay inside a function, each with its reason.
LAZY = {
    # the sandboxed worker imports the oracle package (and so sandbox.py) but must not load the
    # table catalog: the caller sends it the schema to seed
    ("backdoor_sae.oracle.sandbox", "backdoor_sae.oracle.seed"),
}


def test_the_package_imports_its_own_code_at_the_top_only():
    inside = []
    for module in package_modules():
        tree = ast.parse(module_path(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if (isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("backdoor_sae")
                            and (module, sub.module) not in LAZY):
                        inside.append(f"{module}:{sub.lineno} {sub.module}")
                    if isinstance(sub, ast.Import) and any(a.name.startswith("backdoor_sae") for a in sub.names):
                        inside.append(f"{module}:{sub.lineno}")
    assert not inside, inside


def test_the_code_digest_follows_imports():
    """A key's code digest covers every module its step imports, directly or not (the bug: a
    hand-kept file list that left out ``common/model.py``, whose precision the activations use)."""
    from backdoor_sae.common.cache import import_closure

    closure = import_closure("backdoor_sae.activations.stage")
    assert {"backdoor_sae.activations.extract", "backdoor_sae.common.model", "backdoor_sae.common.encoding"} <= closure
    assert not any(m.startswith("backdoor_sae.scoring") for m in closure)
