"""SF-TAP configuration: Figure 3 and a full example load; mistakes are one clear error naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from celltap.cell.sftap_config import ConfigError, load_config, parse_config

FIXTURES = Path(__file__).parent / "fixtures"


def test_figure3_loads_unchanged():
    cfg = load_config(FIXTURES / "figure3.yaml")
    tcp = cfg.rules_for("tcp")
    assert [r.name for r in tcp] == ["torrent_tracker", "http"]  # nice 90 before nice 100
    http = next(r for r in tcp if r.name == "http")
    assert http.balance == 4 and http.socket_names() == ["http0", "http1", "http2", "http3"]
    dns = cfg.rules_for("udp")[0]
    assert (dns.name, dns.ifname, dns.ports, dns.nice, dns.has_regex) == (
        "dns_udp",
        "dns",
        ((53, 53),),
        200,
        False,
    )
    assert cfg.glob.home == "/tmp/sf-tap"
    req = b"GET /announce?info_hash=abc&peer_id=x HTTP/1.1\r\nHost: t\r\n\r\n"
    assert http.up.search(req) and next(r for r in tcp if r.name == "torrent_tracker").up.search(req)


def test_full_example_loads():
    cfg = load_config(FIXTURES / "cell_full.yaml")
    assert set(cfg.special) == {"loopback7", "pcap", "tcp_default", "udp_default", "icmp"}
    assert cfg.rules_for("udp")[0].name == "sip"  # nice 100 before dns_udp's 200
    assert next(r for r in cfg.rules if r.name == "dns_udp").ports == ((53, 53), (5353, 5353), (5355, 5355))
    tcp = [r.name for r in cfg.rules_for("tcp")]
    assert tcp.index("dns_tcp") == len(tcp) - 1


def test_regex_rules_before_port_rules_at_equal_nice():
    cfg = parse_config(
        {
            "byport": {"proto": "TCP", "port": "80", "nice": 50},
            "byregex": {"proto": "TCP", "up": "^GET", "down": "^HTTP", "nice": 50},
        }
    )
    assert [r.name for r in cfg.rules_for("tcp")] == ["byregex", "byport"]


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"http": {"proto": "TCP", "colour": "red"}}, "http.colour"),
        ({"global": {"hom": "/x"}}, "global.hom"),
        ({"http": {"proto": "SCTP"}}, "http.proto"),
        ({"http": {"proto": "TCP", "up": "(unclosed"}}, "http.up"),
        ({"http": {"proto": "TCP", "port": "80-70"}}, "http.port"),
        ({"http": {"proto": "TCP", "body": "maybe"}}, "http.body"),
        ({"http": {"proto": "TCP", "balance": 0}}, "http.balance"),
        ({"http": {"up": "^GET"}}, "http.proto"),
        ({"http": {"proto": "TCP", "format": "json"}}, "http.format"),
    ],
)
def test_mistakes_name_the_key(doc, key):
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith(key + ":")


def test_cli_reports_one_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"http": {"proto": "TCP", "if": "http", "colour": "red"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "cell", "--config", str(bad), "--read", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "http.colour: unknown key" in lines[0]


def test_shared_interface_must_agree():
    ok = {
        "pop": {"proto": "TCP", "if": "mail", "up": "^USER"},
        "smtp": {"proto": "TCP", "if": "mail", "up": "^EHLO"},
    }
    parse_config(ok)
    bad = {**ok, "smtp": {"proto": "TCP", "if": "mail", "up": "^EHLO", "format": "binary"}}
    with pytest.raises(ConfigError, match=r"smtp\.if:"):
        parse_config(bad)
