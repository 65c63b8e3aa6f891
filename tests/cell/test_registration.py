"""A live cell registers itself (cells/<id> with its advertised input) and withdraws at once on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from celltap.registry import kind_prefix, open_registry
from tests.cell.runner import LiveCell, wait_for
from tests.cell.test_live import _config


def test_cell_registers_its_input_and_withdraws_on_sigterm(tmp_path: Path) -> None:
    home = Path("/tmp") / f"ctreg-{tmp_path.name[-8:]}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"file://{tmp_path}/registry"
    advertise = f"vxlan://127.0.0.1:{port}"
    cell = LiveCell(
        _config(tmp_path, home), home,
        ["--input", advertise, "--cell-id", "3", "--registry", url, "--cluster", "t",
         "--advertise", advertise, "--weight", "2", "--lease-ttl", "30"],
    )  # fmt: skip
    reg = open_registry(url)
    key = kind_prefix("t", "cells") + "3"
    try:
        wait_for(lambda: reg.get_json(key) is not None, 20, "the cell to register")
        value = reg.get_json(key)
        assert value["input"] == advertise and value["weight"] == 2 and value["id"] == "3"
        assert value["metrics"] == f"http://127.0.0.1:{cell.metrics_port}/metrics"
        assert cell.metrics()  # the advertised metrics endpoint answers
        left = reg.lease_ttl(key)
        assert left is not None and left > 10  # held by a kept-alive lease, not a plain key
        cell.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        wait_for(lambda: reg.get(key) is None, 10, "the registration to be withdrawn")
        assert time.monotonic() - t0 < 10  # withdrawn, not left to expire after 30 s
        assert cell.proc.wait(20) == 0
    finally:
        if cell.proc.poll() is None:
            cell.proc.kill()
        reg.close()
