"""pyproject.toml and uv.lock: every import declared, the lock current, the web app without torch.

The base dependencies are the web app's; the worker extra adds the federation engine (torch,
lerobot, Flower's simulation); the test extra adds the tools. uv.lock pins them all.
"""

import ast
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
SOURCES = ("fedvla", "bench", "tests")


def _requirements(extra: str | None) -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


def _declared(extras: tuple[str, ...]) -> set[str]:
    """Distributions named in the base dependencies and the given extras, own extras followed."""
    names: set[str] = set()
    pending: list[str | None] = [None, *extras]
    seen: set[str | None] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in _requirements(extra):
            if canonicalize_name(requirement.name) == PROJECT:
                pending.extend(requirement.extras)
            else:
                names.add(canonicalize_name(requirement.name))
    return names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party_imports() -> dict[str, set[Path]]:
    """Top-level modules imported anywhere in the sources, less the standard library and ours
    (our packages, the sibling modules that bench scripts import by name, and the bench scripts
    that their tests import by name)."""
    ours = {"fedvla", "tests", "bench"}
    bench_scripts = {p.stem for p in (ROOT / "bench").glob("*.py")}
    found: dict[str, set[Path]] = {}
    for source in SOURCES:
        for path in (ROOT / source).rglob("*.py"):
            siblings = {p.stem for p in path.parent.glob("*.py")}
            if path.is_relative_to(ROOT / "tests" / "bench"):
                siblings |= bench_scripts
            for name in _imports(path) - ours - siblings - set(sys.stdlib_module_names):
                found.setdefault(name, set()).add(path.relative_to(ROOT))
    return found


def test_every_imported_package_is_declared() -> None:
    distributions_of = packages_distributions()
    declared = _declared(tuple(PYPROJECT["project"]["optional-dependencies"]))

    undeclared = {
        name: sorted(map(str, paths))
        for name, paths in _third_party_imports().items()
        if not {canonicalize_name(d) for d in distributions_of.get(name, [])} & declared
    }

    assert undeclared == {}


Pinned = tuple[str, frozenset[str], frozenset[str], str]


def _locked_requirement(entry: dict[str, Any]) -> Pinned:
    return (
        canonicalize_name(entry["name"]),
        frozenset(entry.get("extras", ())),
        frozenset(map(str, SpecifierSet(entry.get("specifier", "")))),
        entry.get("marker", ""),
    )


def _declared_requirement(requirement: Requirement, extra: str | None) -> Pinned:
    return (
        canonicalize_name(requirement.name),
        frozenset(requirement.extras),
        frozenset(map(str, requirement.specifier)),
        "" if extra is None else f"extra == '{extra}'",
    )


def test_the_lock_matches_pyproject() -> None:
    """What `uv lock --check` tests first: the lock was made from these requirements."""
    locked_project = next(p for p in LOCK["package"] if p["name"] == PROJECT)
    extras: list[str | None] = [None, *PYPROJECT["project"]["optional-dependencies"]]

    declared = {_declared_requirement(r, extra) for extra in extras for r in _requirements(extra)}
    locked = {_locked_requirement(e) for e in locked_project["metadata"]["requires-dist"]}

    assert locked == declared
    assert LOCK["requires-python"] == "==3.12.*"


def _closure(extras: tuple[str, ...]) -> set[str]:
    """Every locked distribution that installing fedvla with these extras brings in (markers
    ignored, so a superset on any one platform)."""
    packages = {p["name"]: p for p in LOCK["package"]}
    found: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(PROJECT, extras)]
    while pending:
        name, wanted = pending.pop()
        package = packages[name]
        new = name not in found
        found.add(name)
        entries = list(package.get("dependencies", ())) if new else []
        for extra in wanted:
            entries += package.get("optional-dependencies", {}).get(extra, [])
        for entry in entries:
            pending.append((entry["name"], tuple(entry.get("extra", ()))))
    return found


def test_the_web_app_starts_and_serves_without_the_engine(tmp_path: Path) -> None:
    """Every module that only the worker extra installs is made unimportable; the web app still
    migrates its database, starts and answers."""
    engine_only = _closure(("worker",)) - _closure(())
    assert {"torch", "lerobot", "ray", "transformers"} <= engine_only
    blocked = sorted(
        module
        for module, distributions in packages_distributions().items()
        if {canonicalize_name(d) for d in distributions} <= engine_only
    )
    script = textwrap.dedent(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        BLOCKED = set({blocked!r})
        BEFORE = set(sys.modules)  # site hooks (setuptools' .pth) ran before us

        class Blocker(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Blocker())

        from fastapi.testclient import TestClient
        from typer.testing import CliRunner

        from fedvla.cli.main import cli
        from fedvla.core.config import Settings
        from fedvla.web.main import create_app

        data = {str(tmp_path)!r}
        env = {{"FEDVLA_DATA_DIR": data, "FEDVLA_ENVIRONMENT": "test"}}
        upgraded = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
        assert upgraded.exit_code == 0, upgraded.output
        settings = Settings(environment="test", data_dir=data)
        with TestClient(create_app(settings)) as client:
            health = client.get("/api/v1/health")
            signin = client.get("/signin")
        assert health.status_code == 200, health.text
        assert signin.status_code == 200, signin.status_code
        loaded = sorted(BLOCKED & {{name.split(".")[0] for name in set(sys.modules) - BEFORE}})
        assert loaded == [], loaded
        print("served")
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("served")


def test_the_wheel_carries_templates_static_files_and_migrations(tmp_path: Path) -> None:
    """A plain install (the images' `uv sync --no-editable`) finds its templates, static files and
    migrations as package data, not beside a source checkout; so does the sdist it is built from."""
    uv = Path(sys.executable).parent / "uv"
    built = subprocess.run(  # the sdist, then the wheel from it (nothing built in the checkout)
        [str(uv), "build", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("fedvla-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in (
        *(ROOT / "fedvla/web/templates").glob("*.html"),
        *(p for p in (ROOT / "fedvla/web/static").rglob("*") if p.is_file()),
        *(ROOT / "fedvla/core/migrations").rglob("*.py"),
        ROOT / "fedvla/core/migrations/script.py.mako",
    ):
        assert str(source.relative_to(ROOT)) in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
