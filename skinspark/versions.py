"""Versions of the stack, recorded in every manifest so a result can be traced to its software."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = (
    "skinspark",
    "pyspark",
    "tensorflow-cpu",
    "horovod",
    "petastorm",
    "pyarrow",
    "numpy",
    "pandas",
    "pillow",
    "simplejpeg",
    "scikit-learn",
)


def package_versions() -> dict[str, str]:
    """Installed version of each package of the stack ("missing" when absent), plus Python's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions
