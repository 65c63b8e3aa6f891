"""The collector's new config keys are validated: a bad value is one error line naming the key."""

from __future__ import annotations

import subprocess

import pytest
from celltap.collector.config import ConfigError, config_from_dict

from tests.ipfix.oracles import CELLTAP, REPO


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_state_bytes", 1000),
        ("max_state_bytes", "256M"),
        ("max_exporter_bytes", -1),
        ("max_domains_per_exporter", 0),
        ("domain_expiry", "1h"),
        ("state_dir", 5),
    ],
)
def test_bad_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=rf"(^|: ){key}: "):
        config_from_dict({key: value})


def test_exporter_share_cannot_exceed_the_whole():
    with pytest.raises(ConfigError, match=r"max_exporter_bytes: .* more than max_state_bytes"):
        config_from_dict({"max_state_bytes": 8 << 20, "max_exporter_bytes": 16 << 20})


def test_good_values_are_taken():
    cfg = config_from_dict(
        {"max_state_bytes": 64 << 20, "max_exporter_bytes": 1 << 20, "max_domains_per_exporter": 8,
         "domain_expiry": 60, "state_dir": "/var/lib/celltap/collector"}
    )  # fmt: skip
    assert (cfg.max_state_bytes, cfg.max_exporter_bytes, cfg.max_domains_per_exporter) == (
        64 << 20,
        1 << 20,
        8,
    )
    assert (cfg.domain_expiry, cfg.state_dir) == (60.0, "/var/lib/celltap/collector")


def test_cli_prints_one_line(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("max_state_bytes: lots\n")
    r = subprocess.run([*CELLTAP, "collector", "--config", str(conf)], capture_output=True, text=True,
                       timeout=60, cwd=str(REPO))  # fmt: skip
    assert r.returncode == 2
    want = f"celltap collector: {conf}: max_state_bytes: must be an integer, got 'lots'"
    assert r.stderr.strip().splitlines() == [want]


def test_unusable_state_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"listen: [udp://127.0.0.1:0]\nmetrics_port: 0\nstate_dir: {blocker}/state\n")
    r = subprocess.run([*CELLTAP, "collector", "--config", str(conf)], capture_output=True, text=True,
                       timeout=60, cwd=str(REPO))  # fmt: skip
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("celltap collector: state_dir: ") and str(blocker) in line
