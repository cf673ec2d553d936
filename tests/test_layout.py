"""The layout rules of the three floors, read from the source with `ast` (nothing is imported):

- npgpt never imports torch; torchgpt never imports npgpt;
- gptcore imports neither torch, the twins, the CLI nor the benchmarks;
- a `gpt2 ...` command module imports no other command module;
- the project's own modules import each other without a cycle.

An import counts wherever it is written (top level, inside a function, under `if TYPE_CHECKING`): an import
moved into a function to dodge a cycle still forms the cycle. Relative imports are resolved, and
`from pkg import mod` counts as importing the module pkg.mod when there is one.
Every rule is also run on a small planted tree (test_each_rule_catches_a_planted_violation), so none of them
can pass by checking nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("gptcore", "npgpt", "torchgpt", "gpt2cli", "benchmarks")
COMMANDS_PACKAGE = "gpt2cli.commands"

# importer package -> the packages it must not import (a name counts with everything under it)
FORBIDDEN = {
    "npgpt": ("torch",),
    "torchgpt": ("npgpt",),
    "gptcore": ("torch", "npgpt", "torchgpt", "gpt2cli", "benchmarks"),
}


# ---------------------------------------------------------------------------------------------------
# reading the imports
# ---------------------------------------------------------------------------------------------------

def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the project's packages under `root`
    (a package's __init__.py is the package's own name)."""
    modules = {}
    for package in PROJECT_PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = file
    return modules


def is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def within(name: str, prefix: str) -> bool:
    """`name` is the module or package `prefix` or lies under it ('torch.nn' is within 'torch')."""
    return name == prefix or name.startswith(prefix + ".")


def imported_names(module: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(dotted name, line) of everything `module` imports, at any depth of its syntax tree.

    `from pkg import name` gives pkg.name when that is one of `modules`, else pkg; relative imports are
    resolved against the module's package.
    """
    tree = ast.parse(modules[module].read_text(encoding="utf-8"), filename=str(modules[module]))
    package_parts = module.split(".") if is_package(module, modules) else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[:len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in modules else base, node.lineno))
    return found


def project_target(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name loads: the longest dotted prefix that is one, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------
# the rules, each returning the violations it finds (empty when the rule holds)
# ---------------------------------------------------------------------------------------------------

def forbidden_imports(root: Path, importer: str, banned: tuple[str, ...]) -> list[str]:
    """'module:line imports name' for every import of a `banned` package by a module within `importer`."""
    modules = project_modules(root)
    return list(dict.fromkeys(f"{module}:{line} imports {name}"        # one line per import statement and name
                              for module in modules if within(module, importer)
                              for name, line in imported_names(module, modules)
                              if any(within(name, ban) for ban in banned)))


def commands_importing_commands(root: Path) -> list[str]:
    """'module:line imports other' for a command module that imports another module of the commands
    package (the package's own __init__ may gather the commands, and a command package such as
    `finetune` its own actions)."""
    modules = project_modules(root)
    violations = []
    for module in modules:
        if not within(module, COMMANDS_PACKAGE) or module == COMMANDS_PACKAGE:
            continue
        for name, line in imported_names(module, modules):
            target = project_target(name, modules)
            is_package = (root / module.replace(".", "/") / "__init__.py").is_file()
            gathers_own_action = is_package and within(target or "", module)
            if target and within(target, COMMANDS_PACKAGE) and target != module and not gathers_own_action:
                violations.append(f"{module}:{line} imports {target}")
    return list(dict.fromkeys(violations))     # `from m import a, b` is one violation


def import_graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at any depth)."""
    modules = project_modules(root)
    graph = {module: set() for module in modules}
    for module in modules:
        for name, _ in imported_names(module, modules):
            target = project_target(name, modules)
            if target and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None; depth-first search with the path on a stack."""
    on_path: list[str] = []
    state: dict[str, str] = {}          # "open" while on the current path, "done" once fully explored

    def visit(node):
        state[node] = "open"
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return on_path[on_path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        on_path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def import_cycles(root: Path) -> list[str]:
    cycle = find_cycle(import_graph(root))
    return [" -> ".join(cycle)] if cycle else []


# ---------------------------------------------------------------------------------------------------
# the rules on this repository
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("importer", list(FORBIDDEN))
def test_floor_imports_nothing_forbidden(importer):
    violations = forbidden_imports(ROOT, importer, FORBIDDEN[importer])
    assert not violations, f"{importer} must not import {FORBIDDEN[importer]}:\n" + "\n".join(violations)


def test_commands_import_no_other_command():
    violations = commands_importing_commands(ROOT)
    assert not violations, "a command imports another command module:\n" + "\n".join(violations)


def test_no_import_cycle():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycle: " + cycles[0]


def test_the_checker_sees_the_whole_project():
    modules = project_modules(ROOT)
    for module in ("gptcore.arch", "gptcore.formats.weights", "npgpt.model", "torchgpt.model", "gpt2cli.main",
                   "gpt2cli.commands.weights", "benchmarks.suite"):
        assert module in modules, module
    edges = import_graph(ROOT)
    assert "gptcore.arch" in edges["gptcore.formats.checkpoint"]       # from gptcore.arch import param_shapes


# ---------------------------------------------------------------------------------------------------
# each rule can fail: a small tree with one planted violation
# ---------------------------------------------------------------------------------------------------

def write_tree(root: Path, files: dict[str, str]) -> None:
    """Every project package as an empty package, then `files` (path -> source) on top."""
    for package in PROJECT_PACKAGES + (COMMANDS_PACKAGE.replace(".", "/"),):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)


PLANTED = {
    "npgpt imports torch inside a function": (
        {"npgpt/fast.py": "import numpy as np\n\ndef f():\n    import torch.nn.functional as F\n    return F\n"},
        lambda root: forbidden_imports(root, "npgpt", FORBIDDEN["npgpt"]),
        "npgpt.fast:4 imports torch.nn.functional"),
    "torchgpt imports npgpt": (
        {"torchgpt/model.py": "from npgpt import model as reference\n"},
        lambda root: forbidden_imports(root, "torchgpt", FORBIDDEN["torchgpt"]),
        "torchgpt.model:1 imports npgpt"),
    "gptcore imports the CLI": (
        {"gptcore/engine/loop.py": "def fail():\n    from gpt2cli.main import UserError\n    raise UserError\n",
         "gpt2cli/main.py": "class UserError(Exception):\n    pass\n"},
        lambda root: forbidden_imports(root, "gptcore", FORBIDDEN["gptcore"]),
        "gptcore.engine.loop:2 imports gpt2cli.main"),
    "gptcore imports torch": (
        {"gptcore/devices.py": "try:\n    import torch\nexcept ImportError:\n    torch = None\n"},
        lambda root: forbidden_imports(root, "gptcore", FORBIDDEN["gptcore"]),
        "gptcore.devices:2 imports torch"),
    "a command imports another command": (
        {"gpt2cli/commands/a.py": "def run():\n    from gpt2cli.commands import b\n",
         "gpt2cli/commands/b.py": "X = 1\n"},
        commands_importing_commands,
        "gpt2cli.commands.a:2 imports gpt2cli.commands.b"),
    "a cycle through a function-level import": (
        {"gptcore/a.py": "from gptcore import b\n",
         "gptcore/b.py": "def f():\n    from . import c\n",
         "gptcore/c.py": "import gptcore.a\n"},
        import_cycles,
        "gptcore.a -> gptcore.b -> gptcore.c -> gptcore.a"),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_each_rule_catches_a_planted_violation(tmp_path, case):
    files, check, expected = PLANTED[case]
    write_tree(tmp_path, {})
    assert check(tmp_path) == []                      # the bare tree passes
    write_tree(tmp_path, files)
    assert check(tmp_path) == [expected]
