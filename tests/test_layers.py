"""The layers of lorafw, enforced on the import graph (grimp; imports inside functions and under TYPE_CHECKING
count too). A module may import its own layer and any layer below it, never one above:

    cli → run → trainers → archs → (data, sampling, outputs, planning, prep, interop)
        → (network, objective, optim) → models → config → helpers

A failure names the import (module:line) and the two layers; fix it by moving the code to the lowest module
it belongs to, not by adding it to KNOWN.
"""

from __future__ import annotations

import functools

import grimp  # the [test] extra

# Top to bottom. Each entry is a module or a package (with everything under it).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # the front ends: `lorafw` (the Python API in lorafw/__init__.py: compose, override, train) and the CLI
    ("cli", ("lorafw", "lorafw.__main__", "lorafw.cli")),
    # one spec → one run; launch.py runs it as N processes (each one runs lorafw.cli.worker, named by string)
    ("run", ("lorafw.run", "lorafw.launch")),
    ("trainers", ("lorafw.trainers",)),
    ("archs", ("lorafw.archs",)),
    # what a run reads, writes and shows, and what `plan`, `import`/`export` and the prep commands work on
    ("data, sampling, outputs, planning (+ prep, interop)", ("lorafw.data", "lorafw.sampling", "lorafw.outputs", "lorafw.planning",
                                                             "lorafw.prep", "lorafw.interop")),
    ("network, objective, optim", ("lorafw.network", "lorafw.objective", "lorafw.optim")),
    ("models", ("lorafw.models",)),
    ("config", ("lorafw.config",)),
    # Small modules that import no other lorafw module (except errors), so any layer may use them:
    # errors (the user-error types), paths (~ and $VARS), logs (the "lorafw" logger, progress bars),
    # run_folder (a run folder's file names and the checks before writing into one), speed (the speed levers'
    # switches), heap (glibc's malloc settings), faults (the test suite's fault injection), precision (which
    # precision a run trains in, from the hardware), placement (which device tensors and modules live on) and
    # families (the model families by name: entry points, imported when asked for, never statically).
    ("helpers", ("lorafw.errors", "lorafw.paths", "lorafw.logs", "lorafw.run_folder", "lorafw.speed", "lorafw.heap",
                 "lorafw.faults", "lorafw.precision", "lorafw.placement", "lorafw.families")),
]

# Imports that break the layers today, each to be removed by the change that says why; the test fails when one
# of them is gone and still listed, so the list only shrinks. (importer, imported), as grimp names them.
KNOWN: set[tuple[str, str]] = {
    # Loading builds the noise schedule the checkpoint declares (objective/schedule.py, diffusers' DDPM); it becomes the
    # family's (archs/: which objectives it trains and their schedules), or the schedule moves below models/.
    ("lorafw.models.load", "lorafw.objective.schedule"),
}


# Pairs of modules that import each other today (none: keep it so).
KNOWN_MUTUAL: set[tuple[str, str]] = set()


@functools.cache
def _graph():
    return grimp.build_graph("lorafw", cache_dir=None)


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the entry holding `module` (None: in no layer). `lorafw` names the package's own
    __init__ only, not everything under it."""
    for i, (_, entries) in enumerate(LAYERS):
        if any(module == e or (e != "lorafw" and module.startswith(e + ".")) for e in entries):
            return i
    return None


def upward_imports(graph) -> dict[tuple[str, str], list[str]]:
    """{(importer, imported): ["importer:line", ...]} for every import of a higher layer by a lower one.
    `lorafw` itself is imported by every module (Python runs a package's __init__ first), so importing it (for
    __version__) is allowed; its own imports are the API's, at the top."""
    out: dict[tuple[str, str], list[str]] = {}
    for importer in graph.modules:
        low = layer_of(importer)
        for imported in graph.find_modules_directly_imported_by(importer):
            high = layer_of(imported)
            if imported == "lorafw" or low is None or high is None or high >= low:
                continue
            lines = [f"{importer}:{d['line_number']}" for d in graph.get_import_details(importer=importer, imported=imported)]
            out[(importer, imported)] = lines or [importer]
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _graph().modules if layer_of(m) is None)
    assert not unplaced, f"put these modules in a layer of LAYERS (tests/test_layers.py): {unplaced}"


def test_no_layer_imports_a_layer_above_it():
    graph = _graph()
    found = upward_imports(graph)
    new = {k: v for k, v in found.items() if k not in KNOWN}
    lines = [f"{', '.join(where)}: {a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
             for (a, b), where in sorted(new.items())]
    assert not lines, "imports of a higher layer:\n" + "\n".join(lines)
    gone = sorted(KNOWN - set(found))
    assert not gone, f"no longer imported, remove from KNOWN: {gone}"


def test_no_two_modules_import_each_other():
    graph = _graph()
    pairs = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if a in graph.find_modules_directly_imported_by(b)})
    new = [p for p in pairs if p not in KNOWN_MUTUAL]
    assert not new, f"modules that import each other (one of them should not): {new}"
    gone = sorted(KNOWN_MUTUAL - set(pairs))
    assert not gone, f"no longer import each other, remove from KNOWN_MUTUAL: {gone}"


def test_the_checker_places_modules_and_finds_an_upward_import():
    assert LAYERS[layer_of("lorafw")][0] == "cli"
    assert LAYERS[layer_of("lorafw.cli.train")][0] == "cli"
    assert LAYERS[layer_of("lorafw.config.validate")][0] == "config"
    assert LAYERS[layer_of("lorafw.errors")][0] == "helpers"
    assert layer_of("lorafw.something_new") is None  # a new top-level module must be placed
    fake = {"lorafw.config.x": ["lorafw.sampling.y"], "lorafw.sampling.y": ["lorafw.config.x", "lorafw"]}

    class Graph:
        modules = set(fake)

        def find_modules_directly_imported_by(self, m):
            return set(fake[m])

        def get_import_details(self, importer, imported):
            return [{"line_number": 3}]

    assert upward_imports(Graph()) == {("lorafw.config.x", "lorafw.sampling.y"): ["lorafw.config.x:3"]}
