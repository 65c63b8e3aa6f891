"""Child processes of a local cluster: each in its own process group, logged to a file, stopped politely.

Each child gets its own session so that a Ctrl-C in the terminal reaches only the launcher, which
then stops the children in reverse start order (SIGTERM to the whole group, SIGKILL after a grace
period): a cell must outlive the analyzers' last reads and the collector must outlive the cells'
last IPFIX records. PR_SET_PDEATHSIG makes a child die with the launcher even if the launcher is
SIGKILLed and never gets to clean up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("celltap.launcher")

PR_SET_PDEATHSIG = 1
CELLTAP = [sys.executable, "-m", "celltap.cli"]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup still applies
        pass


class ChildFailed(RuntimeError):
    """A child exited while it was expected to run; the message quotes its log."""


@dataclass
class Child:
    """One supervised process and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start it with stdout and stderr into its log file."""
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    @property
    def pid(self) -> int:
        """Its process id (also its process group id)."""
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        """True while it runs."""
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        """Its exit status, or None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def tail(self, limit: int = 1500) -> str:
        """The end of its log."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        """Send `sig` to its process group (it and any children it started)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for it to exit; its status or None."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


@dataclass
class Supervisor:
    """All children of one cluster, started in order and stopped in reverse order."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Start a child logging to `<log_dir>/<name>.log`."""
        child = Child(name, argv, self.log_dir / f"{name}.log")
        log.debug("starting %s: %s", name, " ".join(argv))
        child.start(env)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise ChildFailed if a child that should be running has exited."""
        for c in self.children:
            rc = c.returncode()
            if rc is not None and not c.expected_exit:
                raise ChildFailed(
                    f"{c.name} exited with status {rc}; its log ({c.log_path}) ends:\n{c.tail()}"
                )

    def stop(self, children: list[Child] | None = None, grace: float = 10.0) -> dict[str, int | None]:
        """SIGTERM each child's group, then SIGKILL what is left after `grace` seconds; their statuses."""
        todo = [c for c in (children if children is not None else self.children) if c.popen is not None]
        for c in todo:
            if c.alive():
                c.expected_exit = True
                c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in todo:
            if c.wait(max(0.0, deadline - time.monotonic())) is None:
                log.warning("%s did not stop within %.0f s of SIGTERM; killing it", c.name, grace)
                c.signal_group(signal.SIGKILL)
                c.wait(5.0)
            # Grandchildren (balanced analyzers, collector workers) share the group: make sure.
            c.signal_group(signal.SIGKILL)
        return {c.name: c.returncode() for c in todo}

    def stop_all(self, grace: float = 10.0) -> dict[str, int | None]:
        """Stop every child still running at once (an interrupted run has nothing left to flush)."""
        return self.stop(list(reversed(self.children)), grace)
