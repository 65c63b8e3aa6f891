"""Build docker/Dockerfile for real with buildah, from a base image made here, and run it with podman.

No image registry is reachable from these machines, so the Dockerfile's base (`ARG PYTHON_IMAGE`,
python:3.11-slim-bookworm upstream) is made locally: `debootstrap --variant=minbase` of Debian
bookworm (Python 3.11, as the upstream image) from the mirror apt uses, imported with
`podman import` and passed as `--build-arg PYTHON_IMAGE=...`.  The base also carries this machine's
CA bundle and an /etc/pip.conf pointing pip at it, since the build stage's pip reaches PyPI through
the same TLS-inspecting egress as the host's pip.

Containers run with podman and runc (Debian's crun refuses this host's hybrid cgroup layout), the
cgroupfs manager, and rlimits below this sandbox's hard limits (podman's defaults exceed them).
Images live in their own store (overlay driver) under STORE, kept between runs: the base is made once
per Debian suite and package list, the celltap image is rebuilt by every test session.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.deploy.chart import REPO

STORE = Path("/var/tmp/celltap-image-test")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_TAG = (
    "localhost/celltap-base:" + SUITE + "-" + hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:8]
)
TOOLS = ("debootstrap", "buildah", "podman", "runc")


def storage_args() -> list[str]:
    """Global options selecting the test's own image store."""
    return ["--root", str(STORE / "store"), "--runroot", str(STORE / "run"), "--storage-driver", "overlay"]


def podman_args() -> list[str]:
    """Global podman options that work in this sandbox (see the module docstring)."""
    return [*storage_args(), "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


# Per container: rlimits within the sandbox's hard limits.
RUN_LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def require_image_tools() -> None:
    """Skip (saying which) when a tool of the image build is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; scripts/setup.sh --system installs them")


def run(cmd: list[str], timeout: float = 900, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command and fail the test with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def has_image(tag: str) -> bool:
    """Whether the test store holds an image of that name."""
    proc = subprocess.run(
        ["podman", *storage_args(), "image", "exists", tag], capture_output=True, timeout=60
    )
    return proc.returncode == 0


def make_base() -> str:
    """The debootstrapped base image's tag (made and imported when the store lacks it)."""
    if has_image(BASE_TAG):
        return BASE_TAG
    mirror = "http://deb.debian.org/debian"
    with tempfile.TemporaryDirectory(prefix="celltap-base-") as tmp:
        root = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            timeout=1200,
        )
        shutil.copy(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run(["podman", *storage_args(), "import", "-q", "-", BASE_TAG], stdin=tar.stdout)
        assert tar.wait(60) == 0
    return BASE_TAG


def build_image(tag: str) -> str:
    """Build docker/Dockerfile from the repository root on the local base; returns the build log."""
    base = make_base()
    proc = run(
        [
            "buildah",
            *storage_args(),
            "build",
            "--isolation",
            "chroot",
            "--pull=never",
            "--ignorefile",
            "docker/Dockerfile.dockerignore",
            "-f",
            "docker/Dockerfile",
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "-t",
            tag,
            ".",
        ],
        cwd=REPO,
        timeout=1500,
    )
    return proc.stdout + proc.stderr


def remove_image(tag: str) -> None:
    """Remove a test image (its base stays cached)."""
    subprocess.run(["podman", *storage_args(), "rmi", "-f", tag], capture_output=True, timeout=120)


def podman_run(
    tag: str, args: list[str], options: list[str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` of the image with the given run options and container args (not checked)."""
    cmd = ["podman", *podman_args(), "run", "--rm", *RUN_LIMITS, *options, tag, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
