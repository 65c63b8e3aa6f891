"""Apps: merged partials from several nodes equal one instance over all records, and plain-Python
references computed record by record."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from celltap.collector.apps.base import make_app, merge_partials
from celltap.collector.apps.toptalkers import TopTalkersApp
from celltap.collector.apps.users import UNMAPPED

from tests.cluster.records import make_biflow_records, make_records

SPECS = {
    "volume": {"kind": "volume", "key": "src"},
    "top_talkers": {"kind": "top_talkers", "key": "src"},
    "app_mix": {"kind": "app_mix", "key": "flow"},
    "traffic_matrix": {"kind": "traffic_matrix", "key": "src", "v4": 24},
    "port_scan": {"kind": "port_scan", "key": "src", "window": 60, "threshold": 50},
    "syn_flood": {"kind": "syn_flood", "key": "dst", "ratio": 0.3, "min_half_open": 5},
    "users": {"kind": "user_accounting", "key": "src"},
}


def ip(v: int) -> str:
    return str(ipaddress.IPv4Address(int(v)))


def _split_and_merge(name: str, spec: dict, recs: np.ndarray, parts: int, params: dict) -> tuple[dict, dict]:
    single = make_app(name, spec)
    single.update(recs, "e")
    nodes = [make_app(name, spec) for _ in range(parts)]
    rng = np.random.default_rng(11)
    which = rng.integers(0, parts, len(recs))
    for i, node in enumerate(nodes):
        for chunk in np.array_split(recs[which == i], 3):  # several batches per node
            node.update(chunk, "e")
    partials = [json.loads(json.dumps(n.partial())) for n in nodes]  # as they travel: JSON
    merged = merge_partials(nodes[0].describe(), partials)
    return merged.answer(params), single.answer(params)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_merged_partials_equal_one_process(name: str) -> None:
    recs = make_records(np.random.default_rng(1), 5000)
    merged, single = _split_and_merge(name, SPECS[name], recs, 3, {"n": 0})
    assert merged == single


def test_volume_matches_per_record_reference() -> None:
    recs = make_records(np.random.default_rng(2), 3000)
    ref: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in recs.tolist():
        t = ref[ip(r[0])]
        t[0] += r[5]
        t[1] += r[6]
        t[2] += 1
    answer, _ = _split_and_merge("volume", SPECS["volume"], recs, 3, {"n": 0})
    got = {row["key"]: [row["bytes"], row["packets"], row["records"]] for row in answer["top"]}
    assert got == dict(ref)
    assert answer["total"]["bytes"] == int(recs["octetDeltaCount"].sum())


def test_top_talkers_exact_below_capacity() -> None:
    recs = make_records(np.random.default_rng(3), 4000, n_src=200)
    ref = Counter()
    for r in recs.tolist():
        ref[ip(r[0])] += r[6]
    answer, _ = _split_and_merge("top_talkers", SPECS["top_talkers"], recs, 3, {"by": "packets", "n": 10})
    assert answer["exact"] is True
    want = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [(row["key"], row["packets"]) for row in answer["top"]] == want


def test_top_talkers_over_capacity_keeps_space_saving_bounds() -> None:
    rng = np.random.default_rng(4)
    recs = make_records(rng, 20000, n_src=2000)
    heavy = rng.random(len(recs)) < 0.3  # a few heavy hitters among many small sources
    recs["sourceIPv4Address"][heavy] = 0x0A0000FF + rng.integers(0, 5, int(heavy.sum()))
    truth = Counter()
    for r in recs.tolist():
        truth[ip(r[0])] += r[5]
    spec = {"kind": "top_talkers", "key": "src", "capacity": 100}
    answer, _ = _split_and_merge("tt", spec, recs, 3, {"by": "bytes", "n": 5})
    assert answer["exact"] is False
    for row in answer["top"]:
        assert row["bytes"] >= truth[row["key"]] >= row["bytes"] - row["error"]
    assert {row["key"] for row in answer["top"]} == {k for k, _ in truth.most_common(5)}


def test_app_mix_and_syn_flood_references() -> None:
    recs = make_records(np.random.default_rng(5), 3000)
    mix = Counter()
    half, flows = Counter(), Counter()
    for r in recs.tolist():
        mix[r[9].decode() or "(none)"] += r[5]
        if r[2] == 6:
            flows[ip(r[1])] += 1
            half[ip(r[1])] += int(r[7] & 0x02 != 0 and r[7] & 0x10 == 0)
    answer, _ = _split_and_merge("app_mix", SPECS["app_mix"], recs, 3, {"n": 0})
    assert {row["key"]: row["bytes"] for row in answer["top"]} == dict(mix)
    answer, _ = _split_and_merge("syn_flood", SPECS["syn_flood"], recs, 3, {"n": 0})
    assert {row["key"]: (row["tcp_flows"], row["half_open"]) for row in answer["top"]} == {
        k: (flows[k], half[k]) for k in flows
    }


def test_port_scan_finds_the_scanner() -> None:
    recs = make_records(np.random.default_rng(6), 2000)
    scan = make_records(np.random.default_rng(7), 500)
    scan["sourceIPv4Address"] = 0x0B000001
    scan["protocolIdentifier"] = 6
    scan["destinationTransportPort"] = np.arange(1, 501)
    scan["flowStartMilliseconds"] = 1_700_000_040_000  # all inside one 60 s window
    both = np.concatenate([recs, scan])
    answer, _ = _split_and_merge("port_scan", SPECS["port_scan"], both, 3, {"threshold": 400})
    assert [(s["key"], s["distinct_ports"]) for s in answer["scanners"]] == [("11.0.0.1", 500)]


def test_user_accounting_from_file(tmp_path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# DARTA-style mapping\n10.0.0.0/25 alice\n10.0.0.7 bob\n192.168.0.0/16 servers\n")
    recs = make_records(np.random.default_rng(8), 2000)
    spec = {"kind": "user_accounting", "key": "src", "users_file": str(users)}
    app = make_app("users", spec)
    app.update(recs, "e")
    ref: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in recs.tolist():
        s = int(r[0]) - 0x0A000000
        su = "bob" if s == 7 else ("alice" if s < 128 else UNMAPPED)
        ref[su][0] += r[5]
        ref[su][1] += r[6]
        ref["servers"][2] += r[5]
        ref["servers"][3] += r[6]
    got = {
        row["user"]: [row["bytes_out"], row["packets_out"], row["bytes_in"], row["packets_in"]]
        for row in app.answer({"n": 0})["top"]
    }
    assert got == dict(ref)


def test_bad_app_config_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"apps\.x\.key"):
        make_app("x", {"kind": "volume", "key": "flow"})
    with pytest.raises(ValueError, match=r"apps\.y\.kind"):
        make_app("y", {"kind": "nope"})
    assert isinstance(make_app("t", {"kind": "top_talkers"}), TopTalkersApp)


def test_bulk_user_lookup_equals_per_address_longest_prefix() -> None:
    from celltap.collector.apps.columns import V4_TAG
    from celltap.collector.apps.users import UserMap, parse_user_map

    users = UserMap()
    users.set_static(
        parse_user_map("10.0.0.0/8 a\n10.1.0.0/16 b\n10.1.2.0/24 c\n10.1.2.3 d\n0.0.0.0/0 any\n")
    )
    users.set_dynamic(parse_user_map("10.1.0.0/16 reg\n"))  # the registry wins for the same network
    rng = np.random.default_rng(9)
    addrs = np.concatenate([0x0A010200 + rng.integers(0, 512, 300), rng.integers(0, 1 << 32, 300)])
    keys = addrs.astype(np.uint64) | np.uint64(V4_TAG)
    names, idx = users.users_of(keys)
    bulk = [names[i] for i in idx]
    assert bulk == [users.lookup(int(k)) for k in keys]
    assert {"reg", "c", "d", "any"} <= set(bulk) and "b" not in bulk


# ---------------------------------------------------------------- biflow records: both directions
# Columns of make_biflow_records' rows (tolist order).
SRC, DST, PROTO, SPORT, DPORT, OCT, PKT, ROCT, RPKT, FLAGS, START, APPNAME = range(12)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_merged_partials_equal_one_process_on_biflow_records(name: str) -> None:
    recs = make_biflow_records(np.random.default_rng(21), 5000)
    merged, single = _split_and_merge(name, SPECS[name], recs, 3, {"n": 0})
    assert merged == single


def test_volume_app_mix_and_matrix_count_both_directions() -> None:
    recs = make_biflow_records(np.random.default_rng(22), 3000)
    vol: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    mix: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in recs.tolist():
        v = vol[ip(r[SRC])]
        v[0] += r[OCT]
        v[1] += r[ROCT]
        v[2] += r[PKT]
        v[3] += r[RPKT]
        m = mix[r[APPNAME].decode() or "(none)"]
        m[0] += r[OCT] + r[ROCT]
        m[1] += r[PKT] + r[RPKT]
    answer, _ = _split_and_merge("volume", SPECS["volume"], recs, 3, {"n": 0})
    got = {
        row["key"]: [row["orig_bytes"], row["resp_bytes"], row["orig_packets"], row["resp_packets"]]
        for row in answer["top"]
    }
    assert got == dict(vol)
    assert all(row["bytes"] == row["orig_bytes"] + row["resp_bytes"] for row in answer["top"])
    assert answer["total"]["bytes"] == int(
        recs["octetDeltaCount"].sum() + recs["reverseOctetDeltaCount"].sum()
    )
    answer, _ = _split_and_merge("app_mix", SPECS["app_mix"], recs, 3, {"n": 0})
    assert {row["key"]: [row["bytes"], row["packets"]] for row in answer["top"]} == dict(mix)
    answer, _ = _split_and_merge("traffic_matrix", SPECS["traffic_matrix"], recs, 3, {"n": 0})
    assert sum(row["bytes"] for row in answer["top"]) == sum(m[0] for m in mix.values())


def test_top_talkers_by_each_direction_and_both() -> None:
    recs = make_biflow_records(np.random.default_rng(23), 4000, n_src=200)
    both, orig, resp = Counter(), Counter(), Counter()
    for r in recs.tolist():
        both[ip(r[SRC])] += r[OCT] + r[ROCT]
        orig[ip(r[SRC])] += r[OCT]
        resp[ip(r[SRC])] += r[ROCT]
    for by, ref in (("bytes", both), ("orig_bytes", orig), ("resp_bytes", resp)):
        answer, _ = _split_and_merge("top_talkers", SPECS["top_talkers"], recs, 3, {"by": by, "n": 10})
        assert answer["exact"] is True
        want = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        assert [(row["key"], row[by]) for row in answer["top"]] == want


def test_user_accounting_counts_what_each_side_sent_and_received(tmp_path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("10.0.0.0/8 clients\n192.168.0.0/16 servers\n")  # every source / every destination
    recs = make_biflow_records(np.random.default_rng(24), 2000)
    app = make_app("users", {"kind": "user_accounting", "key": "src", "users_file": str(users)})
    app.update(recs, "e")
    ref: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in recs.tolist():
        c, srv = ref["clients"], ref["servers"]
        c[0] += r[OCT]  # a source sends the forward direction...
        c[1] += r[PKT]
        c[2] += r[ROCT]  # ...and receives the reverse one
        c[3] += r[RPKT]
        srv[0] += r[ROCT]
        srv[1] += r[RPKT]
        srv[2] += r[OCT]
        srv[3] += r[PKT]
    got = {
        row["user"]: [row["bytes_out"], row["packets_out"], row["bytes_in"], row["packets_in"]]
        for row in app.answer({"n": 0})["top"]
    }
    assert got == dict(ref)


def test_port_scan_finds_a_horizontal_sweep() -> None:
    recs = make_records(np.random.default_rng(25), 2000)
    sweep = make_records(np.random.default_rng(26), 300)
    sweep["sourceIPv4Address"] = 0x0B000002
    sweep["protocolIdentifier"] = 6
    sweep["destinationTransportPort"] = 22
    sweep["destinationIPv4Address"] = 0xAC100000 + np.arange(300)  # 300 hosts, one port
    sweep["flowStartMilliseconds"] = 1_700_000_040_000
    both = np.concatenate([recs, sweep])
    spec = {**SPECS["port_scan"], "hosts_threshold": 250}
    answer, _ = _split_and_merge("port_scan", spec, both, 3, {"threshold": 400})
    assert answer["scanners"] == []  # one port: not a vertical scan
    assert [(s["key"], s["port"], s["distinct_hosts"]) for s in answer["sweeps"]] == [("11.0.0.2", 22, 300)]
