"""The built wheel installs beside proto-plus (which owns the top-level `proto` package): both
import, `celltap --help` runs, and the wheel puts nothing at the top level but `celltap`.

The wheel is built from exactly the files the Dockerfile's build stage copies, so this also shows
that the image's build context is enough for setup.py's package layout."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.deploy.test_docker import copied_sources, installed_folders

GENERIC_NAMES = ("cell", "collector", "incubator", "loadgen", "proto")
# Run in the fresh venv: prints each requirement of celltap and proto-plus that the importable
# distributions do not meet (nothing when all are met).
REQUIREMENTS_MET = """
from importlib.metadata import PackageNotFoundError, distribution, version
from packaging.requirements import Requirement
for name in ("celltap", "proto-plus"):
    for text in distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            found = version(req.name)
        except PackageNotFoundError:
            print(name, "needs", text, "(missing)")
            continue
        if not req.specifier.contains(found, prereleases=True):
            print(name, "needs", text, "found", found)
"""


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command without PYTHONPATH (the source checkout must not leak in); fail on failure."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """celltap's wheel, built by `pip wheel --no-deps` from the Dockerfile's build context."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = copied_sources(tmp)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)])
    (whl,) = (tmp / "dist").glob("celltap-*.whl")
    return whl


def test_wheel_has_only_celltap_at_the_top(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"celltap", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for component in installed_folders()[1:]:
        assert f"celltap/{component}/__init__.py" in names, component
    assert "celltap/proto/celltap_pb2.py" in names


@pytest.mark.slow
def test_wheel_installs_beside_proto_plus(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin/python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    run([*pip, str(wheel), "proto-plus"])
    # Both packages land in the fresh venv; their dependencies (numpy, grpcio, protobuf...) come from
    # the test venv, on a path after the fresh venv's own site-packages (installing them again took
    # half a minute), and every requirement of both must be met by the versions found there.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = run([str(py), "-c", purelib]).stdout.strip()
    deps = run([sys.executable, "-c", purelib]).stdout.strip()
    (Path(site) / "zz_test_venv_deps.pth").write_text(deps + "\n")
    unmet = run([str(py), "-c", REQUIREMENTS_MET], cwd=tmp_path).stdout.strip()
    assert unmet == "", unmet
    probe = (
        "import proto, celltap.proto.celltap_pb2 as pb, celltap.cell, celltap.collector, celltap.incubator;"
        "import sysconfig; print(proto.__file__); print(pb.__file__); print(sysconfig.get_paths()['purelib'])"
    )
    proto_file, pb_file, site = run([str(py), "-c", probe], cwd=tmp_path).stdout.split()
    site_packages = Path(site)
    # `proto` is proto-plus's (it defines proto.Message), and ours is under celltap/.
    assert Path(proto_file).parent == site_packages / "proto"
    assert "Message" in run([str(py), "-c", "import proto; print(dir(proto))"], cwd=tmp_path).stdout
    assert Path(pb_file).parent == site_packages / "celltap/proto"
    # No generic top-level package of ours: the celltap RECORD lists nothing outside celltap/.
    (record,) = site_packages.glob("celltap-*.dist-info/RECORD")
    ours = {line.split(",", 1)[0].split("/", 1)[0] for line in record.read_text().splitlines()}
    assert not ours & set(GENERIC_NAMES), ours
    for name in GENERIC_NAMES[:-1]:
        assert not (site_packages / name).exists(), f"{name}/ is in site-packages"
    out = run([str(env_dir / "bin/celltap"), "--help"], cwd=tmp_path).stdout
    assert "incubator" in out and "collector" in out
