"""The code's shape: no import cycle in the library (lazy imports inside functions included), one runner for the
stages with thin script shims, and the ``open-rlhf`` console command."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from open_rlhf import stages

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "open_rlhf"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (top level or inside a function)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name` imports `mod`
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_lazy_cycle():
    """The checker itself: a cycle through a function-level import is a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_has_no_import_cycle():
    graph = import_graph()
    assert "open_rlhf.models" in graph and "open_rlhf.rewards" in graph["open_rlhf.stages"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("leaf", ["open_rlhf.errors", "open_rlhf.atomic", "open_rlhf.memory", "open_rlhf.hardware",
                                  "open_rlhf.logs", "open_rlhf.rl_math", "open_rlhf.tasks.gsm8k",
                                  "open_rlhf.metrics"])
def test_bottom_layer_imports_nothing_from_the_project(leaf):
    assert import_graph()[leaf] == set()


def test_models_only_builds_hugging_face_objects():
    """models.py is a leaf below rewards: a reward model as a reward function lives in rewards.py."""
    assert import_graph()["open_rlhf.models"] <= {"open_rlhf.errors", "open_rlhf.kernels"}


@pytest.mark.parametrize("stage", list(stages.STAGES))
def test_stage_scripts_are_shims_of_the_runner(stage):
    script = REPO / "scripts" / f"train_{stage}.py"
    body = ast.parse(script.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring (what it trains and the exact commands)
    code = ast.unparse(ast.Module(body=body, type_ignores=[])).splitlines()
    assert code == ["from open_rlhf.cli import stage_main", "if __name__ == '__main__':",
                    f"    stage_main('{stage}')"], code


def test_open_rlhf_command_lists_the_stages():
    exe = Path(sys.executable).with_name("open-rlhf")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "open_rlhf.cli"]
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f"  {name} " in out.stdout for name in stages.STAGES)
    bad = subprocess.run([*command, "sftt"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown stage or command 'sftt'" in bad.stderr


def test_argparse_help_strings_have_no_lone_percent():
    """argparse %-formats every help string: a lone '%' (e.g. '50% accuracy') prints the argument's internals in
    ``--help`` instead of the text. Write '%%' or rephrase."""
    lone = re.compile(r"""["']help["']\s*[:=]\s*(f?["'])(?:(?!\1).)*?(?<!%)%(?![%(])""")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "open_rlhf").rglob("*.py"))
                 + sorted((REPO / "scripts").glob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if lone.search(line)]
    assert not offenders, offenders
