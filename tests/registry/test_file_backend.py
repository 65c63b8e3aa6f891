"""file:// specifics: several processes sharing one directory, bad files, a vanished directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celltap.registry import RegistryUnavailable, open_registry
from celltap.registry.file_backend import key_file_name

from .conftest import metric

_WRITER = textwrap.dedent(
    """
    import sys
    from celltap.registry import open_registry
    url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reg = open_registry(url)
    for i in range(n):
        reg.put(f"/p/{name}/{i}", {"writer": name, "i": i})
        reg.put("/p/shared", {"writer": name, "i": i})
    reg.close()
    """
)


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/reg"
    n, writers = 150, ["w0", "w1", "w2"]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, w, str(n)]) for w in writers]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    reg = open_registry(url)
    for w in writers:
        got = reg.get_prefix(f"/p/{w}/")
        assert len(got) == n
        assert all(json.loads(v) == {"writer": w, "i": int(k.rsplit("/", 1)[1])} for k, v in got.items())
    assert json.loads(reg.get("/p/shared") or b"null")["i"] == n - 1  # each writer's last put
    # Every mutation bumped the shared counter under the lock: none was lost to a race.
    assert (tmp_path / "reg" / "rev").read_text().split()[1] == str(len(writers) * n * 2)
    leftovers = [f for f in os.listdir(tmp_path / "reg" / "kv") if f.startswith(".tmp")]
    assert leftovers == []
    reg.close()


def test_key_file_names_are_safe_and_distinct() -> None:
    keys = ["/a/b", "/a%2Fb", ".hidden", "/" + "x" * 300, "/" + "x" * 301, "/ü/ /.."]
    names = [key_file_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert "/" not in name and not name.startswith(".") and len(name) <= 255


def test_malformed_files_are_ignored_logged_and_counted(tmp_path: Path, caplog) -> None:
    reg = open_registry(f"file://{tmp_path}")
    reg.put("/m/good", b"1")
    kv = tmp_path / "kv"
    (kv / "junk.json").write_bytes(b"\x00not json")
    (kv / "nokey.json").write_text(json.dumps({"text": "x"}))
    (kv / "badb64.json").write_text(json.dumps({"key": "/m/bad", "b64": "!!!"}))
    (tmp_path / "leases" / "zz.json").write_text(json.dumps({"id": 1, "expires": "soon"}))
    before = metric("celltap_registry_errors_total", op="bad_file")
    assert reg.get_prefix("/m/") == {"/m/good": b"1"}
    assert metric("celltap_registry_errors_total", op="bad_file") >= before + 4
    assert "malformed" in caplog.text
    reg.close()


def test_vanished_directory_is_an_outage_but_an_emptied_one_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = open_registry(f"file://{root}")
    reg.put("/k", b"v")
    os.rename(root, tmp_path / "away")
    with pytest.raises(RegistryUnavailable):
        reg.get_prefix("/")
    with pytest.raises(RegistryUnavailable):
        reg.put("/k", b"v2")
    assert not root.exists()  # an outage must not silently create a fresh registry
    root.mkdir()
    assert reg.get_prefix("/") == {}
    reg.put("/k", b"v3")
    assert reg.get("/k") == b"v3"
    reg.close()


def test_a_put_publishes_its_revision_only_after_its_file(tmp_path: Path) -> None:
    """Watches skip scanning while the revision is unchanged, so a revision a watch can read before
    the key's file exists would hide the key from it until the next change (the demo once waited
    60 s for a node to see itself).  The instant the key's file is written, the revision file must
    still hold the previous revision."""
    from celltap.registry.file_backend import FileRegistry

    reg = FileRegistry(str(tmp_path / "reg"), poll_interval=0.05)
    reg.put("/k/a", b"1")
    before_write: list[str] = []
    write = reg._write_atomic

    def observe(path: str, data: bytes) -> None:
        if os.path.dirname(path) == reg._kv:
            before_write.append(reg._read_rev())  # what a watch polling at this instant reads
        write(path, data)

    reg._write_atomic = observe  # type: ignore[method-assign]
    old = reg._read_rev()
    reg.put("/k/a", b"2")
    assert before_write == [old] and reg._read_rev() != old
    reg.close()


def test_a_watch_polling_throughout_sees_each_put_before_the_next(tmp_path: Path) -> None:
    """Real threads, no interleaving forced: a watch polling every millisecond while another client
    puts a key 1,000 times, each put awaited before the next (as a node's own registration is awaited in
    a quiet cluster).  A put whose revision a poll read too early stays invisible: the wait times out."""
    import queue

    url = f"file://{tmp_path / 'reg'}?poll=0.001"
    reader, writer = open_registry(url), open_registry(url)
    events: queue.Queue = queue.Queue()
    handle = reader.watch_prefix("/k/", events.put, initial=True)
    assert handle.wait_synced(5)
    try:
        for i in range(1000):
            writer.put("/k/a", str(i).encode())
            try:
                event = events.get(timeout=2)
            except queue.Empty:
                raise AssertionError(f"put {i} never reached the watch") from None
            assert event.value == str(i).encode()
    finally:
        reader.close()
        writer.close()
