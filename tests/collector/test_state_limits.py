"""The collector's state is bounded in real memory (issue #15 findings 3 and 7).

The charge per template is checked against tracemalloc; the budgets are per process and per exporter
(one spoofing address cannot lock others out); idle domains expire; a flood against a real collector
process keeps its peak RSS (VmHWM) under the configured bound."""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest
from celltap.collector.ingest import DOMAIN_COST, IngestConfig, Ingestor

from tests.ipfix.oracles import CELLTAP, REPO, free_port


def ipfix(seq: int, body: bytes, odid: int = 1) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, seq, odid) + body


def template_set(
    tid: int, n_fields: int, variable: bool = False, base: int = 1, enterprise: bool = False
) -> bytes:
    if enterprise:  # every field an unknown enterprise element: each its own element object
        specs = [
            struct.pack("!HHI", 0x8000 | ((base + i) % 30000 + 1), 4, 100_000 + 7 * base + i)
            for i in range(n_fields)
        ]
    else:
        specs = [
            struct.pack("!HH", (base + i) % 400 + 1, 65535 if variable and i % 3 == 0 else 4)
            for i in range(n_fields)
        ]
    rec = struct.pack("!HH", tid, n_fields) + b"".join(specs)
    return struct.pack("!HH", 2, 4 + len(rec)) + rec


@pytest.mark.parametrize("n_fields", [1, 16, 128, 512])
@pytest.mark.parametrize("kind", ["fixed", "variable", "enterprise"])
def test_template_charge_covers_what_tracemalloc_measures(n_fields, kind):
    variable, enterprise = kind == "variable", kind == "enterprise"
    ing = Ingestor(IngestConfig(max_templates_per_domain=4096))
    ing.feed([("192.0.2.1", ipfix(0, template_set(256, n_fields, variable, enterprise=enterprise)))], 1.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        charged = ing.state_bytes
        k = 100 if n_fields < 100 else 25
        for i in range(k):
            tset = template_set(300 + i, n_fields, variable, base=i + 1, enterprise=enterprise)
            ing.feed([("192.0.2.1", ipfix(0, tset))], 1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    real = sum(s.size_diff for s in after.compare_to(before, "filename")) / k
    charge = (ing.state_bytes - charged) / k
    assert real <= charge <= 1.6 * real + 1024, (real, charge)


def test_spoofed_domains_from_one_address_do_not_lock_out_real_exporters():
    """Finding 7: 656 KB of spoofed domains from one address filled the global domain table."""
    ing = Ingestor()  # the defaults
    tpl = template_set(256, 4)
    spoofed = [("198.51.100.66", ipfix(0, tpl, odid=d)) for d in range(20_000)]
    assert sum(len(m) for _, m in spoofed) > 656_000
    ing.feed(spoofed, 1.0)
    assert ing.stats.dropped_messages["exporter_limit"] == 20_000 - ing.config.max_domains_per_exporter
    data = struct.pack("!HH", 256, 4 + 16 * 5) + b"\1" * 16 * 5
    real = [(f"192.0.2.{i}", ipfix(0, tpl + data, odid=7)) for i in range(1, 51)]
    out = ing.feed(real, 2.0)
    assert sum(len(b) for b in out) == 50 * 5
    assert ing.stats.dropped_messages.get("too_many_domains", 0) == 0


def test_budgets_refuse_and_count_beyond_the_bound():
    cfg = IngestConfig(max_state_bytes=4 << 20, max_exporter_bytes=1 << 20, max_templates_per_domain=4096)
    ing = Ingestor(cfg)
    for src in range(8):
        msgs = [(f"192.0.2.{src}", ipfix(0, template_set(256 + i, 64, base=i), odid=src)) for i in range(200)]
        ing.feed(msgs, 1.0)
        held = sum(
            e.cost
            for (exp, _), d in ing._domains.items()
            if exp == f"192.0.2.{src}"
            for e in d.templates.values()
        )
        assert held + DOMAIN_COST <= cfg.max_exporter_bytes
    assert ing.state_bytes <= cfg.max_state_bytes
    limits = ("exporter_limit", "memory_limit")
    rejected_sets = sum(ing.stats.dropped_sets[r] for r in limits)
    refused_messages = sum(ing.stats.dropped_messages[r] for r in limits)  # a new domain refused
    assert ing.template_count() + rejected_sets + refused_messages == 8 * 200
    assert ing.stats.dropped_sets["memory_limit"] > 0  # the process budget, not only the shares, was hit
    one = max(e.cost for d in ing._domains.values() for e in d.templates.values())
    assert ing.state_bytes > cfg.max_state_bytes - one - DOMAIN_COST  # the budget is used, not wasted


def test_idle_domains_expire_and_free_their_room():
    cfg = IngestConfig(max_domains_per_exporter=10, domain_expiry=60)
    ing = Ingestor(cfg)
    ing.feed([("192.0.2.1", ipfix(0, template_set(256, 4), odid=d)) for d in range(10)], 0.0)
    ing.feed([("192.0.2.1", ipfix(0, template_set(256, 4), odid=99))], 1.0)
    assert ing.stats.dropped_messages["exporter_limit"] == 1
    ing.feed([("192.0.2.1", ipfix(0, template_set(256, 4), odid=3))], 50.0)  # domain 3 stays busy
    ing.expire(100.0, force=True)
    assert sorted(d for _, d in ing._domains) == [3]
    ing.feed([("192.0.2.1", ipfix(0, template_set(256, 4), odid=99))], 101.0)
    assert ("192.0.2.1", 99) in ing._domains


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_template_flood_keeps_the_collector_process_under_its_bound(tmp_path):
    """A real collector (one worker thread, in the CLI process) flooded with 16,000 templates of 100
    fields (about 830 MB unbounded, by template_cost) from 64 source addresses: its peak RSS grows by less
    than the configured state bound plus the receive path's own buffers."""
    bound = 48 << 20
    port = free_port()
    conf = tmp_path / "c.yaml"
    conf.write_text(
        f"listen: [udp://127.0.0.1:{port}]\nworkers: 1\nmetrics_port: 0\nreceive_buffer: 8388608\n"
        f"max_state_bytes: {bound}\nmax_exporter_bytes: {4 << 20}\nmax_templates_per_domain: 4096\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CELLTAP, "collector", "--config", str(conf)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))  # fmt: skip
    try:
        assert "listening" in proc.stderr.readline()
        time.sleep(0.5)
        base = _vm(proc.pid, "VmRSS")
        socks = []
        for k in range(64):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.{k // 250 + 1}.{k % 250 + 1}", 0))
            socks.append(s)
        sent = 0
        for i in range(16_000 // 64):
            for k, s in enumerate(socks):
                s.sendto(ipfix(i, template_set(256 + i, 100, base=i + k), odid=i // 500), ("127.0.0.1", port))
                sent += 1
            time.sleep(0.02)  # let the collector keep up: this test is about memory, not buffer drops
        time.sleep(3.0)
        peak = _vm(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        for s in socks:
            s.close()
    summary = json.loads([x for x in err.splitlines() if x.startswith("{")][-1])
    assert summary["messages"] + sum(summary["dropped_messages"].values()) == sent
    assert (
        summary["dropped_sets"].get("memory_limit", 0) + summary["dropped_sets"].get("exporter_limit", 0) > 0
    )
    growth = peak - base
    slack = 24 << 20  # recvmmsg slots, decoded batches, allocator slack
    assert growth < bound + slack, f"peak RSS grew {growth >> 20} MiB, bound {bound >> 20} MiB"
    print(
        f"base {base >> 20} MiB, peak {peak >> 20} MiB, growth {growth >> 20} MiB (bound {bound >> 20} MiB)"
    )
    sys.stdout.flush()


def test_domains_spoofed_from_many_addresses_give_way_once_silent():
    """Spoofing many source addresses fills the whole table (each address within its own share); a
    real exporter that comes later is refused, counted, while the flood is fresh, and gets in once the
    flooded domains have been silent for EVICT_IDLE seconds (not the hour of domain_expiry)."""
    from celltap.collector.ingest import EVICT_IDLE

    ing = Ingestor(IngestConfig(max_domains=500))
    tpl = template_set(256, 4)
    ing.feed([(f"198.51.{i // 250}.{i % 250 + 1}", ipfix(0, tpl, odid=1)) for i in range(2000)], 0.0)
    assert len(ing._domains) == 500 and ing.stats.dropped_messages["too_many_domains"] == 1500
    data = struct.pack("!HH", 256, 4 + 16 * 5) + b"\1" * 16 * 5
    early = ing.feed([("192.0.2.1", ipfix(0, tpl + data, odid=7))], EVICT_IDLE / 2)
    assert early == [] and ing.stats.dropped_messages["too_many_domains"] == 1501
    later = ing.feed([("192.0.2.1", ipfix(0, tpl + data, odid=7))], EVICT_IDLE + 1)
    assert sum(len(b) for b in later) == 5
    assert sum(n for (_, ev), n in ing.stats.domain_events.items() if ev == "evicted") == 1
