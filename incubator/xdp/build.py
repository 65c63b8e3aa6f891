"""Build the BPF object from the C source next to this file, once per source and compiler (cached).

The object is named by a digest of the source and of `clang --version`, under
$CELLTAP_BPF_CACHE (default ~/.cache/celltap/bpf), so an edited source or another compiler
builds anew and concurrent processes never read a half-written file (write, then rename).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("celltap_partition.bpf.c")


class BuildError(RuntimeError):
    """clang is missing or the source did not compile."""


def cache_dir() -> Path:
    """Where built objects are kept."""
    env = os.environ.get("CELLTAP_BPF_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "celltap" / "bpf"


def _include_dirs() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return [f"-I/usr/include/{multiarch}"]


def build_object(clang: str | None = None) -> Path:
    """Path of the compiled object, compiling it if the cache lacks it."""
    clang = clang or os.environ.get("CELLTAP_CLANG") or shutil.which("clang")
    if not clang:
        raise BuildError("clang not found (Debian: apt-get install clang llvm libbpf-dev)")
    try:
        ver = subprocess.run([clang, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"{clang} --version failed: {exc}") from exc
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src + ver.encode()).hexdigest()[:16]
    out = cache_dir() / f"celltap_partition-{digest}.o"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", *_include_dirs(), "-c", str(SOURCE), "-o", str(tmp)]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"cannot build {SOURCE.name} into {out.parent}: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise BuildError(f"clang could not build {SOURCE.name}: {first}")
    try:
        os.replace(tmp, out)
    except OSError as exc:
        raise BuildError(f"cannot store {out}: {exc}") from exc
    return out
