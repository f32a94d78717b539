"""The distribution's layout: what pyproject declares is what the tree holds, and nothing shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared_dirs() -> dict[str, Path]:
    """Package name -> folder, from setuptools' packages + package-dir."""
    tool = PYPROJECT["tool"]["setuptools"]
    mapping: dict[str, str] = tool["package-dir"]
    out = {}
    for package in tool["packages"]:
        # The longest mapped prefix decides the folder, as setuptools does.
        prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        rest = package[len(prefix) :].lstrip(".").replace(".", "/")
        out[package] = ROOT / mapping[prefix] / rest
    return out


def test_no_package_named_platform_in_the_repo_root() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists(), "platform/__init__.py shadows the stdlib module"


def test_stdlib_platform_and_torch_import_from_the_repo_root() -> None:
    code = "import platform, torch; assert hasattr(platform, 'system'), platform.__file__; print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Linux"


def test_every_package_folder_is_declared() -> None:
    declared = {path.resolve() for path in _declared_dirs().values()}
    on_disk = {
        init.parent.resolve()
        for top in ("sdk", "platform", "runtimes")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - declared == set(), "package folders missing from [tool.setuptools] packages"
    assert declared - on_disk == set(), "declared packages without an __init__.py"


def test_sdk_import_does_not_pull_torch_or_the_server() -> None:
    code = (
        "import sys, ember; "
        "heavy = sorted(m for m in ('torch', 'nats', 'starlette', 'uvicorn', 'numpy') if m in sys.modules); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_base_install_is_the_sdk_only() -> None:
    deps = [d.split(">")[0].split("=")[0].strip() for d in PYPROJECT["project"]["dependencies"]]
    assert sorted(deps) == ["httpx", "pydantic"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"server", "text", "image", "audio", "all", "dev"} <= set(extras)


def test_code_imports_ember_never_the_folder_names() -> None:
    offenders = []
    for top in ("sdk", "platform", "runtimes", "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                stripped = line.strip()
                if stripped.startswith(("from runtimes", "import runtimes", "from sdk", "import sdk")):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {stripped}")
    assert offenders == []
