"""Each deployable imports only what it ships: a function is deployed with its own requirements.txt (and the
`jobs` package), so a module it imports at start from any other distribution of this environment would fail
there with ModuleNotFoundError, while every test here passes. Each function's main module is imported in a
process where every top-level module of a distribution outside its requirements (and their dependencies) is
unimportable; an optional import that a library guards with `except ImportError` stays optional."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = sorted(p.name for p in (REPO / "functions").iterdir() if (p / "main.py").is_file())
# Namespace packages shared by shipped and unshipped distributions alike: not judged by their top-level name.
NAMESPACES = {"google", "opentelemetry", "grpc_status"}


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ (]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def shipped(requirements: Path) -> set[str]:
    """The distributions a requirements file installs: its own and, transitively, their dependencies."""
    todo = [_name(line) for line in requirements.read_text().splitlines() if line.strip() and line[0] != "#"]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in requires if "extra ==" not in r)
    return seen


def unshipped_modules(requirements: Path) -> list[str]:
    ships = shipped(requirements)
    return sorted(top for top, dists in metadata.packages_distributions().items()
                  if top not in NAMESPACES and not top.startswith("_")
                  and not any(d.lower().replace("_", "-") in ships for d in dists))


_IMPORT = """
import importlib.abc, importlib.util, sys
blocked = set(sys.argv[2].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not shipped with this deployable", name=name)
        return None
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_imports_only_what_its_requirements_install(function: str) -> None:
    folder = REPO / "functions" / function
    blocked = [m for m in unshipped_modules(folder / "requirements.txt") if m not in {"jobs", "functions"}]
    done = subprocess.run([sys.executable, "-c", _IMPORT, str(folder / "main.py"), ",".join(blocked)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
