"""One contract for every registry backend: the same tests against file:// and a real etcd server."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from celltap.registry import LeaseNotFound, Membership, WatchEvent, member_key

from .conftest import Store, errors_total, metric, wait_until

TTL = 1.0  # etcd's minimum with the fixture's fast raft timings; leases expire within ~1.5 s


def test_put_get_delete_and_json(store: Store) -> None:
    reg = store.open()
    p = store.prefix
    reg.put(p + "bytes", b"\x00\x01\xfe\xff")
    reg.put(p + "text", "héllo")
    reg.put(p + "obj", {"id": "n1", "grpc": "10.0.0.1:7000", "weight": 2, "apps": ["topn"]})
    assert reg.get(p + "bytes") == b"\x00\x01\xfe\xff"
    assert reg.get(p + "text") == "héllo".encode()
    assert reg.get_json(p + "obj") == {"id": "n1", "grpc": "10.0.0.1:7000", "weight": 2, "apps": ["topn"]}
    assert reg.get(p + "missing") is None
    reg.put(p + "text", b"replaced")
    assert reg.get(p + "text") == b"replaced"
    assert reg.delete(p + "text") is True
    assert reg.delete(p + "text") is False
    assert reg.get(p + "text") is None


def test_get_prefix_returns_only_that_prefix_sorted(store: Store) -> None:
    reg = store.open()
    p = store.prefix
    for key in ("cells/b", "cells/a", "cells/a/x", "cellsX/c", "nodes/n"):
        reg.put(p + key, key)
    got = reg.get_prefix(p + "cells/")
    assert list(got) == [p + "cells/a", p + "cells/a/x", p + "cells/b"]
    assert got[p + "cells/b"] == b"cells/b"
    assert reg.get_prefix(p + "nothing/") == {}


def test_long_and_odd_keys_round_trip(store: Store) -> None:
    reg = store.open()
    keys = [store.prefix + "a b/%2F/..", store.prefix + "x" * 400, store.prefix + "ünï/代码"]
    for i, key in enumerate(keys):
        reg.put(key, str(i))
    assert reg.get_prefix(store.prefix) == {k: str(i).encode() for i, k in enumerate(keys)}


def test_second_client_sees_first_clients_writes(store: Store) -> None:
    a, b = store.open(), store.open()
    a.put(store.prefix + "k", b"v")
    assert b.get(store.prefix + "k") == b"v"
    b.delete(store.prefix + "k")
    assert a.get(store.prefix + "k") is None


def test_lease_expiry_removes_keys(store: Store) -> None:
    reg = store.open()
    lease = reg.lease(TTL)
    reg.put(store.prefix + "leased", b"x", lease=lease)
    reg.put(store.prefix + "plain", b"y")
    assert reg.get(store.prefix + "leased") == b"x"
    t0 = time.monotonic()
    assert wait_until(lambda: reg.get(store.prefix + "leased") is None, timeout=5)
    assert time.monotonic() - t0 >= TTL * 0.5  # not deleted at once: it really expired
    assert reg.get(store.prefix + "plain") == b"y"
    with pytest.raises(LeaseNotFound):
        reg.put(store.prefix + "late", b"z", lease=lease)
    assert lease.refresh() is False


def test_lease_ttl_tells_what_is_left(store: Store) -> None:
    reg = store.open()
    lease = reg.lease(5.0)
    reg.put(store.prefix + "leased", b"x", lease=lease)
    reg.put(store.prefix + "plain", b"y")
    left = reg.lease_ttl(store.prefix + "leased")
    assert left is not None and 2.0 <= left <= 5.0, left
    assert reg.lease_ttl(store.prefix + "plain") is None
    assert reg.lease_ttl(store.prefix + "missing") is None
    lease.revoke()
    assert wait_until(lambda: reg.lease_ttl(store.prefix + "leased") is None, timeout=2.0)


def test_keep_alive_keeps_keys_and_revoke_removes_them(store: Store) -> None:
    reg = store.open()
    other = store.open()
    lease = reg.lease(TTL)
    reg.put(store.prefix + "alive", b"1", lease=lease)
    lease.keep_alive()
    time.sleep(TTL * 2.5)
    assert other.get(store.prefix + "alive") == b"1"
    lease.revoke()
    assert wait_until(lambda: other.get(store.prefix + "alive") is None, timeout=1.0)


def _collect(reg, prefix: str, initial: bool = False):
    events: queue.Queue[WatchEvent] = queue.Queue()
    handle = reg.watch_prefix(prefix, events.put, initial=initial)
    assert handle.wait_synced(5)
    return handle, events


def _next(events: queue.Queue[WatchEvent], timeout: float = 5.0) -> WatchEvent:
    return events.get(timeout=timeout)


def test_watch_delivers_puts_and_deletes_in_order(store: Store) -> None:
    # Each change is awaited before the next: the file backend polls, so only changes that last
    # a poll interval are promised there (a burst collapses to its final state; etcd sees all).
    reg, writer = store.open(), store.open()
    p = store.prefix
    writer.put(p + "before", b"0")
    handle, events = _collect(reg, p + "w/")
    writer.put(p + "w/a", b"1")
    assert _next(events) == WatchEvent("put", p + "w/a", b"1")
    writer.put(p + "elsewhere", b"x")
    writer.put(p + "w/a", b"2")
    assert _next(events) == WatchEvent("put", p + "w/a", b"2")
    writer.put(p + "w/a", b"2")  # the same value again is still a put
    assert _next(events) == WatchEvent("put", p + "w/a", b"2")
    writer.delete(p + "w/a")
    assert _next(events) == WatchEvent("delete", p + "w/a", None)
    handle.cancel()
    writer.put(p + "w/after-cancel", b"3")
    time.sleep(0.3)
    assert events.empty()


def test_watch_burst_converges_to_final_state(store: Store) -> None:
    reg, writer = store.open(), store.open()
    p = store.prefix
    state: dict[str, bytes] = {}

    def apply(event: WatchEvent) -> None:
        if event.type == "put":
            assert event.value is not None
            state[event.key] = event.value
        else:
            del state[event.key]  # a delete of a key never reported as put would fail here

    handle = reg.watch_prefix(p, apply)
    assert handle.wait_synced(5)
    for i in range(30):
        writer.put(f"{p}k{i % 7}", str(i))
        if i % 3 == 0:
            writer.delete(f"{p}k{(i + 2) % 7}")
    assert wait_until(lambda: state == writer.get_prefix(p), timeout=5)


def test_watch_initial_delivers_existing_keys_then_changes(store: Store) -> None:
    reg = store.open()
    p = store.prefix
    reg.put(p + "a", {"id": "a"})
    reg.put(p + "b", {"id": "b"})
    _, events = _collect(reg, p, initial=True)
    assert [_next(events) for _ in range(2)] == [
        WatchEvent("put", p + "a", b'{"id":"a"}'),
        WatchEvent("put", p + "b", b'{"id":"b"}'),
    ]
    reg.delete(p + "a")
    assert _next(events) == WatchEvent("delete", p + "a", None)
    assert events.empty()


def test_watch_reports_lease_expiry_as_delete(store: Store) -> None:
    reg, owner = store.open(), store.open()
    _, events = _collect(reg, store.prefix)
    lease = owner.lease(TTL)
    owner.put(store.prefix + "ephemeral", b"e", lease=lease)
    assert _next(events) == WatchEvent("put", store.prefix + "ephemeral", b"e")
    t0 = time.monotonic()
    assert _next(events, timeout=5) == WatchEvent("delete", store.prefix + "ephemeral", None)
    assert time.monotonic() - t0 >= TTL * 0.5


def test_watch_callback_errors_are_counted_and_watch_continues(store: Store) -> None:
    reg = store.open()
    seen: list[str] = []

    def callback(event: WatchEvent) -> None:
        seen.append(event.key)
        if event.key.endswith("boom"):
            raise RuntimeError("analysis bug")

    before = metric("celltap_registry_errors_total", op="watch_callback")
    handle = reg.watch_prefix(store.prefix, callback)
    assert handle.wait_synced(5)
    reg.put(store.prefix + "boom", b"1")
    assert wait_until(lambda: len(seen) == 1)
    reg.put(store.prefix + "fine", b"2")
    assert wait_until(lambda: len(seen) == 2)
    assert metric("celltap_registry_errors_total", op="watch_callback") == before + 1


def test_membership_snapshot_and_callbacks(store: Store) -> None:
    ra, rb = store.open(), store.open()
    ma = Membership(ra, store.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.5)
    mb = Membership(rb, store.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.5)
    changes: list[dict] = []
    view = ma.watch("nodes", on_change=changes.append)
    assert view.wait_synced(5)
    ma.register("nodes", "n1", {"grpc": "127.0.0.1:7001", "weight": 1})
    mb.register("nodes", "n2", {"grpc": "127.0.0.1:7002", "weight": 3})
    mb.register("cells", "c1", {"input": "vxlan://127.0.0.1:4789", "weight": 1})
    assert wait_until(lambda: set(view.members()) == {"n1", "n2"})
    assert view.members()["n2"] == {"id": "n2", "grpc": "127.0.0.1:7002", "weight": 3}
    assert ra.get_json(member_key(store.cluster, "nodes", "n1"))["grpc"] == "127.0.0.1:7001"
    assert changes[-1] == view.members()
    assert set(mb.members("nodes")) == {"n1", "n2"}
    assert set(ma.members("cells")) == {"c1"}
    time.sleep(TTL * 2)  # keep-alive holds both registrations past their TTL
    assert set(view.members()) == {"n1", "n2"} and ma.registered and mb.registered
    mb.close()  # withdraws: its members vanish at once, not at lease expiry
    assert wait_until(lambda: set(view.members()) == {"n1"}, timeout=1.0)
    assert changes[-1] == {"n1": {"id": "n1", "grpc": "127.0.0.1:7001", "weight": 1}}
    ma.close()


def test_member_with_bad_json_is_ignored_and_counted(store: Store) -> None:
    reg = store.open()
    m = Membership(reg, store.cluster, ttl=TTL)
    view = m.watch("cells")
    assert view.wait_synced(5)
    before = metric("celltap_registry_errors_total", op="member_value")
    reg.put(member_key(store.cluster, "cells", "bad"), b"{not json")
    reg.put(member_key(store.cluster, "cells", "good"), {"id": "good"})
    assert wait_until(lambda: "good" in view.members())
    assert "bad" not in view.members()
    assert metric("celltap_registry_errors_total", op="member_value") == before + 1
    m.close()


class _Child:
    """A member_process.py subprocess with its stdout read by a thread."""

    def __init__(self, url: str, cluster: str, member_id: str) -> None:
        script = os.path.join(os.path.dirname(__file__), "member_process.py")
        self.proc = subprocess.Popen(
            [sys.executable, script, url, cluster, "nodes", member_id, str(TTL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.latest: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.latest = json.loads(line)["members"]


def test_two_processes_see_each_other_and_a_killed_one_expires(store: Store) -> None:
    reg = store.open()
    me = Membership(reg, store.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.5)
    view = me.watch("nodes")
    me.register("nodes", "parent", {"pid": os.getpid()})
    child = _Child(store.url, store.cluster, "child")
    try:
        assert wait_until(lambda: set(view.members()) == {"parent", "child"}, timeout=15)
        assert view.members()["child"]["pid"] == child.proc.pid
        assert wait_until(lambda: child.latest == ["child", "parent"], timeout=5)
        child.proc.kill()  # no withdrawal: only lease expiry can remove it
        child.proc.wait(timeout=5)
        t0 = time.monotonic()
        assert wait_until(lambda: set(view.members()) == {"parent"}, timeout=6)
        assert time.monotonic() - t0 >= TTL * 0.3
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
    me.close()


def test_child_process_withdraws_on_clean_exit(store: Store) -> None:
    reg = store.open()
    me = Membership(reg, store.cluster, ttl=TTL)
    view = me.watch("nodes")
    child = _Child(store.url, store.cluster, "leaver")
    assert wait_until(lambda: "leaver" in view.members(), timeout=15)
    assert child.proc.stdin is not None
    child.proc.stdin.close()
    assert child.proc.wait(timeout=10) == 0
    assert "leaver" not in view.members() or wait_until(lambda: "leaver" not in view.members(), timeout=0.8)
    me.close()


def test_outage_keeps_snapshot_counts_errors_and_recovers(private_store: Store) -> None:
    s = private_store
    ra, rb = s.open(), s.open()
    ma = Membership(ra, s.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.3)
    mb = Membership(rb, s.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.3)
    view = ma.watch("nodes")
    ma.register("nodes", "a", {"weight": 1})
    mb.register("nodes", "b", {"weight": 1})
    assert wait_until(lambda: set(view.members()) == {"a", "b"})
    errors_before = errors_total()

    s.down()
    time.sleep(TTL * 2.5)  # longer than a lease: nothing may be dropped from the local view
    assert set(view.members()) == {"a", "b"}
    assert errors_total() > errors_before
    assert metric("celltap_registry_connected") == 0

    s.up()
    assert wait_until(lambda: metric("celltap_registry_connected") == 1, timeout=10)
    assert wait_until(lambda: ma.registered and mb.registered, timeout=10)
    assert wait_until(lambda: set(ra.get_prefix(view.prefix)) == {view.prefix + "a", view.prefix + "b"}, 10)
    assert wait_until(lambda: set(view.members()) == {"a", "b"}, timeout=5)
    mb.register("nodes", "c", {"weight": 1})  # the watch works again after the outage
    assert wait_until(lambda: set(view.members()) == {"a", "b", "c"}, timeout=5)
    ma.close()
    mb.close()


def test_reregisters_when_registry_comes_back_empty(private_store: Store) -> None:
    s = private_store
    reg = s.open()
    m = Membership(reg, s.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.3)
    view = m.watch("collectors")
    registration = m.register("collectors", "col1", {"listen": ["udp://0.0.0.0:4739"]})
    assert wait_until(lambda: "col1" in view.members())
    rereg_before = metric("celltap_registry_reregistrations_total", kind="collectors")

    s.down()
    time.sleep(0.5)
    assert "col1" in view.members()
    s.up(wipe=True)  # a rebuilt registry: our key and lease are gone
    key = member_key(s.cluster, "collectors", "col1")
    assert wait_until(lambda: reg.get(key) is not None, timeout=10)
    assert reg.get_json(key) == {"id": "col1", "listen": ["udp://0.0.0.0:4739"]}
    # both counted just after the registration is written (the supervisor thread): wait for them
    assert wait_until(lambda: registration.times_registered == 2, timeout=5)
    assert wait_until(
        lambda: metric("celltap_registry_reregistrations_total", kind="collectors") == rereg_before + 1,
        timeout=5,
    )
    assert wait_until(lambda: "col1" in view.members(), timeout=5)
    m.close()


def test_process_started_while_registry_down_registers_when_it_appears(private_store: Store) -> None:
    s = private_store
    reg = s.open()
    s.down()
    m = Membership(reg, s.cluster, ttl=TTL, retry_initial=0.05, retry_max=0.3)
    view = m.watch("incubators")
    registration = m.register("incubators", "inc1", {"mode": "mirror"})  # must not raise
    assert not view.wait_synced(0.5) and not m.registered
    assert view.members() == {}
    s.up()
    assert wait_until(lambda: registration.registered.is_set(), timeout=10)
    assert wait_until(lambda: view.members() == {"inc1": {"id": "inc1", "mode": "mirror"}}, timeout=15)
    assert view.wait_synced(0)
    m.close()
