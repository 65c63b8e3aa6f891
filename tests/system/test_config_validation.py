"""Every value out of range, in every subcommand's flags and config files: one line naming the key.

The walk is systematic, not a list of remembered cases: every numeric flag of every subcommand must
carry a stated range (celltap.cli_types), and is tried just below and above it and with a non-number;
every config schema (the RANGES documents of the incubator, cell, collector, node and cluster
configs) is walked with celltap.config_schema.out_of_range, each case written as a YAML file and run
through the real subcommand in its own process. The expectation comes from the case itself: the
process must fail, print exactly one line, name the key, and print no traceback. The schemas and the
walker's verdicts are checked against the `jsonschema` package (an independent implementation).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from celltap.cell.sftap_config import GLOBAL_RANGES, RULE_RANGES
from celltap.collector.config import RANGES as COLLECTOR_RANGES
from celltap.collector.node_config import RANGES as NODE_RANGES
from celltap.incubator.config import RANGES as INCUBATOR_RANGES

from celltap.cli import SUBCOMMANDS, build_parser
from celltap.cli_types import Bounded
from celltap.config_schema import out_of_range, problems
from celltap.launcher.spec import RANGES as SPEC_RANGES
from tests.system.cli_batch import MARK

CELLTAP = [sys.executable, "-m", "celltap.cli"]
ROOT = Path(__file__).resolve().parents[2]


def assert_one_line(p: subprocess.CompletedProcess, *words: str) -> None:
    """Failed, one stderr line containing every word, no traceback."""
    assert p.returncode != 0, (p.args, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (p.args, p.stderr)
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---------------------------------------------------------------- flags


def _flag_actions() -> list[tuple[list[str], argparse.Action]]:
    """(command words, action) for every option of every subcommand, nested ones included."""
    out: list[tuple[list[str], argparse.Action]] = []

    def walk(words: list[str], parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk([*words, name], sub)
            elif action.option_strings:
                out.append((words, action))

    top = build_parser()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                walk([name], sub)
    return out


FLAGS = _flag_actions()
BOUNDED = [(w, a) for w, a in FLAGS if isinstance(a.type, Bounded)]


def test_the_walk_sees_every_subcommand() -> None:
    assert {w[0] for w, _ in FLAGS} >= set(SUBCOMMANDS) - {"node", "up"}  # node/up: --config only
    assert len(BOUNDED) >= 40


def test_every_numeric_flag_states_its_range() -> None:
    bare = [
        f"celltap {' '.join(w)} {a.option_strings[0]}"
        for w, a in FLAGS
        if a.type in (int, float) and not a.choices
    ]
    assert bare == [], f"numeric flags without a range (use celltap.cli_types.bounded): {bare}"


def _flag_cases() -> list[tuple[list[str], str, str]]:
    cases = []
    for words, action in BOUNDED:
        t = action.type
        step = 1 if t.kind is int else 0.5
        values = ["abc"]
        if t.lo is not None:
            values.append(str(t.lo - step))
        if t.hi is not None:
            values.append(str(t.hi + step))
        for v in values:
            cases.append((words, action.option_strings[-1], v))
    return cases


@pytest.mark.parametrize(("words", "flag", "value"), _flag_cases(), ids=lambda x: str(x))
def test_out_of_range_flag_is_one_line(words: list[str], flag: str, value: str, capsys) -> None:
    from celltap.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*words, f"{flag}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err


# ---------------------------------------------------------------- config files


def _set(doc: dict, path: tuple, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key, nxt in itertools.pairwise(path):
        if isinstance(node, list):
            node = node[key]
            continue
        if node.get(key) is None:
            node[key] = [{}] if isinstance(nxt, int) else {}
        node = node[key]
    node[path[-1]] = value
    return doc


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _numeric_leaves(schema: dict, path: tuple = ()) -> list[tuple]:
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
    out = [path] if {"integer", "number"} & set(kinds) else []
    for key, sub in schema.get("properties", {}).items():
        out += _numeric_leaves(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        out += _numeric_leaves(schema["items"], (*path, 0))
    return out


# kind -> (schema, key path prefix in the file, base config, command line after `celltap`)
def _kinds(tmp: Path) -> dict[str, tuple[dict, tuple, dict, list[str]]]:
    home = str(tmp / "home")
    sftap_base = {"global": {"home": home}, "http": {"proto": "TCP", "port": 80, "if": "http"}}
    return {
        "incubator": (
            INCUBATOR_RANGES,
            (),
            {"capture": "pcap:missing.pcap", "cells": [{"id": "c0", "output": "pcap:out.pcap"}]},
            ["incubator"],
        ),
        "cell-global": (GLOBAL_RANGES, ("global",), sftap_base, ["cell", "--read", "missing.pcap"]),
        "cell-rule": (RULE_RANGES, ("http",), sftap_base, ["cell", "--read", "missing.pcap"]),
        "collector": (
            COLLECTOR_RANGES,
            (),
            {"listen": "udp://127.0.0.1:0", "metrics_port": 0},
            ["collector", "--duration", "1"],
        ),
        "node": (
            NODE_RANGES,
            (),
            {"id": "n1", "listen": "127.0.0.1:0", "http": None, "registry": f"file://{tmp}/registry"},
            ["node"],
        ),
        "up": (SPEC_RANGES, (), {"registry": f"file://{tmp}/registry"}, ["up"]),
    }


def _config_cases(tmp: Path) -> list[tuple[str, list[str], str, Path]]:
    """(kind, argv, the dotted key the error must name, config file) for every out-of-range value."""
    cases = []
    for kind, (schema, prefix, base, argv) in _kinds(tmp).items():
        values = list(out_of_range(schema)) + [(p, "not-a-number") for p in _numeric_leaves(schema)]
        for i, (path, value) in enumerate(values):
            full = (*prefix, *path)
            doc = _set(base, full, value)
            f = tmp / f"{kind}-{i}.yaml"
            f.write_text(yaml.safe_dump(doc))
            cases.append((kind, [*argv, "--config", str(f)], _dotted(full), f))
    return cases


def test_every_out_of_range_config_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = _config_cases(tmp_path)
    assert len(cases) > 80
    assert {kind for kind, *_ in cases} == {
        "incubator",
        "cell-global",
        "cell-rule",
        "collector",
        "node",
        "up",
    }

    def run_kind(kind: str) -> list[str]:
        mine = [c for c in cases if c[0] == kind]
        p = subprocess.run(
            [sys.executable, "-m", "tests.system.cli_batch"],
            input=json.dumps([argv for _, argv, _, _ in mine]),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert p.returncode == 0, p.stderr
        failures = []
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith(MARK))
        for (_, argv, key, f), out in zip(mine, json.loads(line[len(MARK) :]), strict=True):
            done = subprocess.CompletedProcess(argv, out["code"], "", out["stderr"])
            if out["code"] == "accepted":
                failures.append(f"{kind} {key}: accepted ({f.read_text()!r})")
                continue
            try:
                assert_one_line(done, key)
            except AssertionError as exc:
                failures.append(f"{kind} {key} ({f.read_text()!r}): {exc}")
        return failures

    with ThreadPoolExecutor(2) as pool:
        failures = [f for result in pool.map(run_kind, sorted({c[0] for c in cases})) for f in result]
    assert failures == [], "\n".join(failures)


SCHEMAS = {
    "incubator": INCUBATOR_RANGES,
    "cell-global": GLOBAL_RANGES,
    "cell-rule": RULE_RANGES,
    "collector": COLLECTOR_RANGES,
    "node": NODE_RANGES,
    "up": SPEC_RANGES,
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_are_json_schema_and_the_walker_agrees_with_jsonschema(name: str) -> None:
    schema = SCHEMAS[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    cases = list(out_of_range(schema))
    assert cases, name
    for path, value in cases:
        doc = _set({}, path, value)
        assert not validator.is_valid(doc), (path, value)  # jsonschema rejects it too
        assert list(problems(doc, schema)), (path, value)
    # and an in-range value of each numeric key passes both
    for path in _numeric_leaves(schema):
        sub = schema
        for p in path:
            sub = sub["items"] if isinstance(p, int) else sub["properties"][p]
        lo = sub.get("minimum", sub.get("exclusiveMinimum", 0) + 1)
        doc = _set({}, path, lo)
        assert validator.is_valid(doc) and not list(problems(doc, schema)), (path, lo)


# ---------------------------------------------------------------- the probe's cases, end to end


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["cell", "--config", "x.yaml", "--reader-buffer", "-5"], ["--reader-buffer"]),
        (["collector", "--listen", "udp://127.0.0.1:0", "--workers", "0"], ["--workers"]),
        (["analyzer", "http", "--socket", "s", "--metrics-port", "99999"], ["--metrics-port"]),
        (["loadgen", "ipfix", "127.0.0.1:9", "--exporters", "0"], ["--exporters"]),
        (["loadgen", "ipfix", "127.0.0.1:9", "--source-base", "abc"], ["--source-base"]),
        (["cell", "--config", "x.yaml", "--input", "vxlan://127.0.0.1:99999"], ["--input", "port"]),
        (["cell", "--config", "x.yaml", "--input", "vxlan://127.0.0.1:0?vni=x"], ["--input", "vni"]),
        (["cell", "--config", "x.yaml", "--ipfix", "udp://127.0.0.1:99999"], ["--ipfix", "port"]),
        (["cell", "--config", "x.yaml", "--advertise", "x"], ["--advertise"]),
        (["status", "--registry", "etcd://"], ["etcd endpoint"]),
    ],
)
def test_probe_flags(argv: list[str], words: list[str], tmp_path: Path) -> None:
    p = subprocess.run([*CELLTAP, *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert_one_line(p, *words)


@pytest.mark.parametrize(
    ("command", "doc", "words"),
    [
        ("node", {"id": "n", "lease_ttl": -1}, ["lease_ttl"]),
        ("node", {"id": "n", "grpc_workers": 0}, ["grpc_workers"]),
        ("node", {"id": "n", "registry": "etcd://"}, ["registry", "no etcd endpoint"]),
        (
            "node",
            {"id": "n", "http": None, "listen": "192.0.2.1:50051"},
            ["192.0.2.1:50051", "not available"],
        ),
        ("collector", {"listen": "udp://127.0.0.1:0", "routing": {"batch_records": -1}}, ["batch_records"]),
        ("collector", {"listen": "udp://127.0.0.1:0", "registry": "etcd://"}, ["registry", "etcd endpoint"]),
        (
            "incubator",
            {"capture": "pcap:x", "cells": [], "fragments": {"timeout_s": -1}},
            ["fragments.timeout_s"],
        ),
        ("cell", {"global": {"hop_limit": 100000}}, ["global.hop_limit"]),
        ("up", {"lease_ttl": -1}, ["lease_ttl"]),
        ("up", {"nodes": {"apps": {"x": {"kind": "nosuch"}}}}, ["nodes.apps.x.kind"]),
        (
            "incubator",
            {"capture": "pcap:x", "cells": [{"id": "a", "output": "bogus:o"}]},
            ["cells[0].output"],
        ),
        (
            "incubator",
            {"capture": "pcap:x", "cells": [{"id": "a", "output": "vxlan://127.0.0.1:99999"}]},
            ["cells[0].output", "out of range"],
        ),
    ],
)
def test_probe_configs(command: str, doc: dict, words: list[str], tmp_path: Path) -> None:
    doc.setdefault("registry", f"file://{tmp_path}/registry") if command in ("node", "up") else None
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(doc))
    extra = ["--read", "missing.pcap"] if command == "cell" else []
    p = subprocess.run(
        [*CELLTAP, command, "--config", str(f), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert_one_line(p, *words)


@pytest.mark.parametrize("command", ["cell", "incubator", "collector", "node", "up", "demo", "analyze"])
def test_a_yaml_syntax_error_is_one_line_with_its_place(command: str, tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: [1, 2\nb: 3\n")
    (tmp_path / "x.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # empty
    extra = {"cell": ["--read", "x.pcap"], "analyze": ["--read", "x.pcap"]}.get(command, [])
    p = subprocess.run(
        [*CELLTAP, command, "--config", str(f), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert_one_line(p, "not valid YAML", "line 2")


def test_loadgen_ipfix_keeps_sending_to_a_closed_port() -> None:
    """ICMP port unreachable makes a connected UDP socket's next send fail: counted, not fatal."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run(
        [*CELLTAP, "loadgen", "ipfix", f"127.0.0.1:{port}", "--duration", "1.5", "--template-refresh", "0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["messages"] > 0 and out["send_errors"] > 0, out
