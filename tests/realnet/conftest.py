"""Session fixtures of the test bed: the captures are made once, analyzed once per capture kind.

`REALNET_CAPTURES=DIR` reuses captures made earlier by `python -m tests.realnet.make_captures DIR`
(no root needed then); otherwise the bed is built and every scenario captured into a temp dir (root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.realnet.compare import Results, StreamMatch, stream_matches


@pytest.fixture(scope="session")
def capdir(tmp_path_factory) -> Path:
    """A directory with every scenario's captures and the manifest."""
    reuse = os.environ.get("REALNET_CAPTURES")
    require_tool("tshark")
    if reuse:
        path = Path(reuse)
        if not (path / "manifest.json").exists():
            pytest.skip(f"REALNET_CAPTURES={reuse} has no manifest.json")
        return path
    require_root()
    from tests.realnet.make_captures import make_captures
    from tests.realnet.servers import tools_missing

    missing = tools_missing()
    if missing:
        pytest.skip(f"test bed tools not installed: {', '.join(missing)}; scripts/setup.sh --system")
    out = tmp_path_factory.mktemp("realnet-captures")
    make_captures(out)
    return out


@pytest.fixture(scope="session")
def results(capdir, tmp_path_factory) -> dict[str, Results]:
    """tshark's items and celltap's records, matched per protocol and scenario: `celltap analyze` over
    tcpdump's file, over celltap's own capture, and live on the monitoring port (`analyze -i`)."""
    work = tmp_path_factory.mktemp("realnet-analysis")
    return {kind: Results.build(capdir, kind, work) for kind in ("tcpdump", "celltap", "live")}


@pytest.fixture(scope="session")
def streams(capdir, results, tmp_path_factory) -> dict[str, StreamMatch]:
    """Per scenario: tshark's complete TCP streams vs the cell's and vs conn.log, on tcpdump's capture."""
    conn = results["tcpdump"].records.get("conn", [])
    return stream_matches(capdir, "tcpdump", tmp_path_factory.mktemp("realnet-streams"), conn)
