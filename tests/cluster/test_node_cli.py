"""Bad node / routing-collector configs end in one error line naming the key, exit status 2."""

from __future__ import annotations

import argparse

import pytest
import yaml
from celltap.collector import node_cli

from celltap.cli import main as celltap_main


def _node(tmp_path, capsys, cfg: dict | None) -> tuple[int, str]:
    path = tmp_path / "node.yaml"
    if cfg is not None:
        path.write_text(yaml.safe_dump(cfg))
    rc = node_cli.main(argparse.Namespace(config=str(path)))
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("cfg", "names"),
    [
        (None, "node.yaml"),
        ({"listen": "127.0.0.1:1"}, "id"),
        ({"id": "a", "colour": "red"}, "colour"),
        ({"id": "a", "listen": "nope"}, "listen"),
        ({"id": "a", "weight": 0}, "weight"),
        ({"id": "a", "apps": {"x": {"kind": "volume", "key": "flow"}}}, "apps.x.key"),
        ({"id": "a", "apps": {"y": {"kind": "zzz"}}}, "apps.y.kind"),
        ({"id": "a", "tls": {"cert": "/nonexistent.pem"}}, "tls"),
    ],
)
def test_node_config_errors_name_the_key(tmp_path, capsys, cfg, names) -> None:
    rc, err = _node(tmp_path, capsys, cfg)
    assert rc == 2
    assert len(err.splitlines()) == 1 and names in err, err


def test_routing_section_errors_name_the_key(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"registry": f"file://{tmp_path}/r", "routing": {"windw": 3}}))
    assert celltap_main(["collector", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "routing" in err and "windw" in err
    path.write_text(yaml.safe_dump({"registry": f"file://{tmp_path}/r", "routing": {"window": "many"}}))
    assert celltap_main(["collector", "--config", str(path)]) == 2
    assert "routing.window" in capsys.readouterr().err
