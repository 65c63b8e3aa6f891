"""The launcher's waits say how they ended: a component that never answered is told from one that
answered with the wrong view (the message is all a user of `celltap demo`/`up` gets)."""

from __future__ import annotations

import socket

import pytest

from celltap.launcher.cluster import _http_json, wait_until


def test_a_wait_on_a_port_nobody_serves_names_the_refusal() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/status"  # bound, never listening: refused
        with pytest.raises(TimeoutError) as err:
            wait_until(lambda: bool(_http_json(url)), 0.3, "the node", lambda: None)
    assert "waiting for the node" in str(err.value) and "Connection refused" in str(err.value)


def test_a_wait_whose_condition_stays_false_says_so() -> None:
    with pytest.raises(TimeoutError, match="the condition was still false"):
        wait_until(lambda: False, 0.2, "nothing", lambda: None)
