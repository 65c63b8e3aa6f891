"""The cell's input sockets (`loopback7`, `pcap`) accept only the cell's user, or a configured group.

A live cell (as root) creates its interface directory; other identities then try to connect with a
real AF_UNIX connect() under `setpriv` (another uid, chosen groups). The positive controls — the same
identity reaching an output socket, or the configured group reaching the input sockets — show that a
refusal comes from the socket's own mode and not from a directory it could not reach.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_root, require_tool
from tests.security.netns import REPO, celltap_in, private_netns, stop

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

CONFIG = REPO / "tests" / "cell" / "fixtures" / "cell_full.yaml"  # has loopback7, pcap, tcp_default
NOBODY, NOGROUP = 65534, 65534
CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno); sys.exit(3)\n"
)


def connect_as(path: Path, uid: int, gid: int, groups: list[int]) -> bool:
    """True when `uid` (primary `gid`, supplementary `groups`) can connect() to the socket `path`."""
    setpriv = require_tool("setpriv")
    # A system interpreter other users may run (a venv under /root is out of their reach).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 for the other uid to connect() with")
    groups_arg = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    p = subprocess.run(
        [
            setpriv,
            f"--reuid={uid}",
            f"--regid={gid}",
            *groups_arg,
            python,
            "-c",
            CONNECT,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert p.returncode in (0, 3), p.stderr
    return p.returncode == 0


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="ctsec-", dir="/tmp"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_cell(ns: str, home: Path, config: Path) -> subprocess.Popen:
    proc = celltap_in(
        ns, "cell", "--config", str(config), "--home", str(home), "--input", "vxlan://127.0.0.1:4789"
    )
    deadline = time.monotonic() + 30
    while not (
        (home / "loopback7").exists() and (home / "pcap").exists() and (home / "tcp" / "default").exists()
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(
                f"cell did not create its sockets: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    return proc


def mode(path: Path) -> int:
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


def test_input_sockets_are_owner_only_by_default(shared_tmp: Path) -> None:
    require_root()
    home = shared_tmp / "home"
    with private_netns() as ns:
        proc = start_cell(ns, home, CONFIG)
        try:
            assert mode(home / "loopback7") == 0o600
            assert mode(home / "pcap") == 0o600
            assert mode(home / "tcp" / "default") == 0o660  # output sockets: readers in the cell's group
            # nobody, made a member of the cell's group (root, gid 0): the group can reach the directory
            # and read an output socket, yet neither input socket.
            member = (NOBODY, NOGROUP, [0])
            assert connect_as(home / "tcp" / "default", *member)
            assert not connect_as(home / "loopback7", *member)
            assert not connect_as(home / "pcap", *member)
            assert not connect_as(home / "loopback7", NOBODY, NOGROUP, [])
            assert connect_as(home / "loopback7", 0, 0, [])  # the cell's own user still can
        finally:
            stop(proc)


def test_socket_group_opens_the_input_sockets_to_that_group_only(shared_tmp: Path) -> None:
    require_root()
    home = shared_tmp / "home"
    data = yaml.safe_load(CONFIG.read_text())
    data["global"]["socket_group"] = "nogroup"
    config = shared_tmp / "cell.yaml"
    config.write_text(yaml.safe_dump(data))
    with private_netns() as ns:
        proc = start_cell(ns, home, config)
        try:
            for name in ("loopback7", "pcap"):
                assert mode(home / name) == 0o660
                assert (home / name).lstat().st_gid == NOGROUP
                assert connect_as(home / name, NOBODY, NOGROUP, [])  # a member of the configured group
                assert not connect_as(home / name, 1, 1, [])  # daemon: another uid outside it
            assert stat.S_IMODE(home.stat().st_mode) == 0o751  # the group can reach, nobody can list
            assert not connect_as(home / "tcp" / "default", NOBODY, NOGROUP, [])  # outputs stay private
        finally:
            stop(proc)


def test_unknown_socket_group_is_one_clear_line(shared_tmp: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "cell", "--config", str(CONFIG),
         "--home", str(shared_tmp / "h"), "--socket-group", "no-such-group-xyz", "--read", "x.pcap"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip() == "celltap cell: --socket-group: no group 'no-such-group-xyz' on this host"
