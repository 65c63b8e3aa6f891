"""Network namespaces with veth pairs for the incubator's kernel-interface tests."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str) -> str:
    """Run a command, raising with its stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


class NetNS:
    """A named network namespace, removed on exit (with every interface in it)."""

    def __init__(self, tag: str) -> None:
        self.name = f"cti-{tag}-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> NetNS:
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def ip(self, *args: str) -> str:
        """`ip` inside the namespace."""
        return sh("ip", "-n", self.name, *args)

    def exec(self, *cmd: str, **kw: object) -> subprocess.Popen:
        """Start a process inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)  # type: ignore[call-overload]

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a process inside the namespace to completion."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True, timeout=timeout
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn in a thread that joined this namespace: sockets it creates live in the namespace."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def veth(self, a: str, b: str, other: NetNS | None = None, up: bool = True) -> None:
        """A veth pair a <-> b: a here, b here or in `other`."""
        self.ip("link", "add", a, "type", "veth", "peer", "name", b)
        if other is not None:
            self.ip("link", "set", b, "netns", other.name)
        self.ip("link", "set", a, "up")
        (other or self).ip("link", "set", b, "up")
