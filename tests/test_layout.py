"""The house: the package installs as a plain path, every module imports, the layers hold
and nothing imports in a circle, and a wheel carries everything it needs."""

from __future__ import annotations

import ast
import graphlib
import importlib
import importlib.util
import os
import pkgutil
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

import llm_monitor
from llm_monitor.demo.setup import DEMO_ORGS
from tests.proxy import ROOT, log_in, running_dashboard

PACKAGE = ROOT / "addons" / "llm_monitor"
BIN = Path(sys.executable).parent


def package_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(llm_monitor.__path__, "llm_monitor.")
        if not info.name.endswith("__main__")
    ]


def test_editable_install_is_a_path_not_an_import_hook() -> None:
    assert Path(llm_monitor.__file__).resolve() == PACKAGE / "__init__.py"
    pth_files = [
        path
        for directory in site.getsitepackages()
        for path in Path(directory).glob("__editable__*llm_monitor*.pth")
    ]
    assert pth_files, "llm-monitor is not installed in editable mode"
    for pth in pth_files:
        lines = pth.read_text().split()
        assert lines == [str(ROOT / "addons")], f"{pth} holds {lines}, not the source root"


def test_every_module_imports() -> None:
    modules = package_modules()
    assert len(modules) > 30  # the walk found the sub-packages, not just the top
    for name in modules:
        importlib.import_module(name)


def imports_of(path: Path, module: str) -> set[str]:
    """The llm_monitor modules that `module` (at `path`) imports, anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from llm_monitor.proxy import workers` imports the module workers
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("llm_monitor")} - {module}


def test_no_module_imports_in_a_circle() -> None:
    modules = set(package_modules())
    graph = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        graph[name] = imports_of(Path(spec.origin), name) & modules
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError, naming the circle


def test_layers_hold() -> None:
    """`lint-imports` (import-linter) checks the layers written in pyproject.toml."""
    result = subprocess.run(
        [BIN / "lint-imports", "--config", ROOT / "pyproject.toml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    """Build the wheel, install it into a new virtualenv and, from a folder outside the
    checkout, initialise a database, fill the demo and open the dashboard's landing page."""
    # From a copy of what git knows of (links kept as links): a build in the checkout
    # would reuse its build/ folder, stale files included.
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_symlink() or (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, source],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    for noise in ("SetuptoolsDeprecationWarning", "is absent from the `packages` configuration"):
        assert noise not in built.stdout + built.stderr
    (wheel,) = wheels.glob("llm_monitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = "llm_monitor/shipped-data/"
    for expected in (
        "pricing/overrides.json",
        "datasette_config/metadata.yml",
        "datasette_config/plugins/llm_monitor_auth.py",
        "datasette_config/templates/login.html",
    ):
        assert shipped + expected in names
    assert "llm_monitor/proxy/addon.py" in names and "llm_monitor/cli/__init__.py" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # The dependencies come from this venv's pip cache; llm-monitor only from the wheel.
    subprocess.run([python, "-m", "pip", "install", "-q", wheel], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean_env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{clean_env.get('PATH', '')}"

    def run(*args: str) -> str:
        result = subprocess.run(
            [env_dir / "bin" / "llm-monitor", *args],
            capture_output=True,
            text=True,
            cwd=work,
            env=clean_env,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    where = subprocess.run(
        [python, "-c", "import llm_monitor; print(llm_monitor.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=clean_env,
    ).stdout
    assert where.startswith(str(env_dir)), where
    assert "schema ready" in run("init")
    demo = run("demo", "--no-serve", "--requests", "20", "--history-days", "1")
    assert "traffic: 20 requests through the proxy" in demo

    email, password, _ = DEMO_ORGS["Acme Corp"]
    db = work / "llm-monitor-demo.db"
    with (
        running_dashboard(db, tmp_path / "dashboard.log", python=python, cwd=work) as url,
        httpx.Client(base_url=url) as browser,
    ):
        assert log_in(browser, email, password).status_code == 302
        landing = browser.get("/")
        assert landing.status_code == 200 and "LLM Monitor: Acme Corp" in landing.text
        assert browser.get("/llm-monitor/by_model.json").json()["rows"]
