"""IPFIX export details: biflow direction, template refresh, end reasons (decoded by the ipfix package)."""

from __future__ import annotations

import io
import random

import ipfix.ie
import ipfix.reader
from celltap.cell.abstractor import Abstractor
from celltap.cell.flow_export import FlowExporter
from celltap.cell.sftap_config import parse_config

from celltap.pcap.batch import FrameBatch
from tests.cell.captures import tcp_session


def _ended(n: int) -> list:
    a = Abstractor(parse_config({"http": {"proto": "TCP", "up": "^GET", "down": "^HTTP", "if": "http"}}))
    rng = random.Random(5)
    frames = sorted(
        f for i in range(n) for f in tcp_session(rng, i, client_bytes=500, server_bytes=900).frames
    )
    a.process_frames(FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames]))
    a.finish()
    return a.take_ended()


def _decode(messages: list[bytes]) -> list[dict]:
    """Records of a message stream (one session, so templates carry over between messages)."""
    ipfix.ie.use_iana_default()
    ipfix.ie.use_5103_default()
    return list(ipfix.reader.from_stream(io.BytesIO(b"".join(messages))).namedict_iterator())


def _has_template_set(msg: bytes) -> bool:
    return msg[16:18] == b"\x00\x02"  # the first set after the 16-byte header is a template set


def test_biflow_records_and_template_refresh():
    flows = _ended(6)
    exp = FlowExporter("udp://127.0.0.1:9", domain=3, refresh_seconds=10)
    first = exp.messages_for(flows[:3], 1000.0)
    again = exp.messages_for(flows[3:], 1005.0)  # within the refresh interval: no templates
    later = exp.messages_for(flows[3:], 1011.0)  # past it: templates again
    exp.close()
    recs = _decode(first + again)
    assert len(recs) == 6
    for rec in recs:
        assert str(rec["sourceIPv4Address"]).startswith("10.0.0.")  # the initiator is the source
        assert rec["destinationTransportPort"] == 80
        assert rec["applicationName"] == "http"
        assert rec["flowEndReason"] == 3  # FIN both ways
        assert rec["reverseOctetDeltaCount"] > rec["octetDeltaCount"] > 500
        assert rec["packetDeltaCount"] > 3 and rec["reversePacketDeltaCount"] > 3
        assert rec["flowEndMilliseconds"] >= rec["flowStartMilliseconds"]
    assert _has_template_set(first[0]) and not _has_template_set(again[0]) and _has_template_set(later[0])
    assert int.from_bytes(first[0][12:16], "big") == 3  # observation domain


def test_records_carry_the_uid_of_the_conn_log_record() -> None:
    """flowId (IANA 148) and the enterprise uid element equal the uid conn.log gives the same flow."""
    from celltap.cell.analyze.conn_log import conn_record

    from celltap.flowid import uid_from_flow_id
    from celltap.ipfix.enterprise import DOCUMENTATION_PEN, UID_ELEMENT_ID

    flows = _ended(40)
    exp = FlowExporter("udp://127.0.0.1:9", domain=3)
    recs = _decode(exp.messages_for(flows, 1000.0))
    exp.close()
    conn = {
        (r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]): r["uid"]
        for r in (conn_record(f, None) for f in flows)
    }
    got = {}
    for rec in recs:
        uid = rec[f"_ipfix_{DOCUMENTATION_PEN}_{UID_ELEMENT_ID}"].decode()
        assert uid == uid_from_flow_id(rec["flowId"])
        tup = (str(rec["sourceIPv4Address"]), rec["sourceTransportPort"])
        got[(*tup, str(rec["destinationIPv4Address"]), rec["destinationTransportPort"])] = uid
    assert len(set(got.values())) == len(flows) == 40
    assert got == conn


def test_enterprise_number_comes_from_the_environment() -> None:
    """CELLTAP_IPFIX_PEN moves the uid element to another PEN, 0 leaves it out, a bad value is one line."""
    import os
    import subprocess
    import sys

    code = (
        "from celltap.ipfix.export import biflow_templates\n"
        "print([(f.name, f.ie.enterprise, f.length) for f in biflow_templates()[0].fields[-2:]])"
    )

    def run(pen: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "CELLTAP_IPFIX_PEN": pen}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)

    assert run("4242").stdout.strip() == "[('flowId', 0, 8), ('celltapUid', 4242, 12)]"
    assert run("0").stdout.strip() == "[('applicationName', 0, 65535), ('flowId', 0, 8)]"
    bad = run("32473x")
    assert bad.returncode != 0 and "CELLTAP_IPFIX_PEN='32473x'" in bad.stderr
