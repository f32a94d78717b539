"""The installed version of the ``ember`` distribution."""

from importlib import metadata

try:
    __version__ = metadata.version("ember")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
