"""celltap: scale-out application-level traffic analysis.

The design's components live in the repository's top-level folders (incubator/, cell/, collector/,
proto/, loadgen/) and are imported as subpackages of this one: `celltap.cell`, `celltap.collector`...
A built wheel or an editable install maps them there (pyproject's package-dir), so nothing named
`proto` or `cell` lands at the top of site-packages. Run from a source checkout without installing
(PYTHONPATH=checkout), the folders beside this one are found through `__path__` below.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "cell" / "__init__.py").is_file():
    __path__.append(str(_checkout))
