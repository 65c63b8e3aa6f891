"""The 30-line analyzer in docs/analyzers.md works against a real interface socket."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.analyzers import traffic
from tests.analyzers.harness import serve_stream
from tests.analyzers.streams import event_stream

DOC = Path(__file__).resolve().parents[2] / "docs" / "analyzers.md"


def test_thirty_line_example_counts_bytes_per_direction(tmp_path: Path) -> None:
    text = DOC.read_text()
    section = text[text.index("30 lines of Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 30
    script = tmp_path / "example.py"
    script.write_text(code)
    convs = traffic.http_conversations()
    sock = str(tmp_path / "http")
    th = serve_stream(sock, event_stream(convs))
    out = subprocess.run([sys.executable, str(script), sock], capture_output=True, text=True, timeout=30)
    th.join(5)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(convs)
    for conv, row in zip(convs, rows, strict=True):
        client_bytes = sum(len(p) for c, p in conv.turns if c)
        server_bytes = sum(len(p) for c, p in conv.turns if not c)
        by_endpoint = {row["bytes_from_1"], row["bytes_from_2"]}
        assert by_endpoint == {client_bytes, server_bytes}
        assert row["reason"] == "NORMAL"
