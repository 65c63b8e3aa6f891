"""Package layout only (everything else is in pyproject.toml).

The repository's top-level component folders install as subpackages of `celltap`: `cell/` becomes
`celltap.cell`, `proto/` becomes `celltap.proto`. pyproject.toml cannot express a prefix for a whole
found tree, so the list is computed here.
"""

from setuptools import find_packages, setup

COMPONENTS = ("incubator", "cell", "collector", "proto", "loadgen")

packages = find_packages(include=["celltap", "celltap.*"])
package_dir = {"celltap": "celltap"}
for component in COMPONENTS:
    package_dir[f"celltap.{component}"] = component
    packages.append(f"celltap.{component}")
    packages += [f"celltap.{component}.{sub}" for sub in find_packages(component)]

setup(packages=packages, package_dir=package_dir)
