"""Package layout (metadata lives in pyproject.toml).

``configs/`` stays at the top of the repository (where users browse it) and is installed as the package data
``lvisctl/configs/``, so a wheel carries the same configs as a checkout (one copy in the repository);
``lvisctl.config.CONFIG_ROOT`` finds either. The real LVIS v1 category table ships as
``lvisctl/data/lvis_v1_categories.json``. pyproject.toml cannot combine this mapping with automatic
package discovery, hence this file.
"""

from pathlib import Path

from setuptools import find_packages, setup

# configs/ and each of its folders become lvisctl.configs[.<folder>] (data-only packages, no __init__.py)
CONFIG_DIRS = sorted({p.parent.relative_to("configs") for p in Path("configs").rglob("*.yaml")})
CONFIG_PACKAGES = {".".join(("lvisctl", "configs", *d.parts)): str(Path("configs", d)) for d in CONFIG_DIRS}

setup(
    packages=[*find_packages(include=["lvisctl", "lvisctl.*"]), *CONFIG_PACKAGES],
    package_dir=CONFIG_PACKAGES,
    package_data={
        **{name: ["*.yaml"] for name in CONFIG_PACKAGES},
        "lvisctl.data": ["lvis_v1_categories.json"],
    },
)
