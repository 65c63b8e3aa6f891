"""`sip`: SIP over UDP 5060: INVITE / 100 Trying / 180 Ringing / 200 OK (SDP both ways) / ACK /
BYE / 200 OK calls, and every 4th transaction a REGISTER / 200 OK. `--count` = calls or registrations."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.udpflow import UdpExchange

NET = 5
USERS = ("alice", "bob", "carol", "dave", "1001", "1002", "2040")


def _ip(b: bytes) -> str:
    return (
        ".".join(str(x) for x in b) if len(b) == 4 else ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))
    )


def sdp(rng: random.Random, addr: str, port: int, sess: int) -> bytes:
    """An SDP offer/answer for one audio stream."""
    return (
        f"v=0\r\no=- {sess} {sess} IN IP4 {addr}\r\ns=celltap call\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
    ).encode()


def sip_message(first: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """A SIP message with Content-Length (and Content-Type when there is a body)."""
    lines = [first, *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def conversation(rng: random.Random, link: Link, register: bool) -> Frames:
    """One call (or one registration) between the client and its SIP proxy on `link`."""
    ex = UdpExchange(link, 5060, 5060, rng)
    c_ip, s_ip = _ip(link.caddr), _ip(link.saddr)
    caller, callee = rng.sample(USERS, 2)
    domain = "example.com"
    call_id = f"{rng.getrandbits(64):016x}@{c_ip}"
    ftag, ttag = f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32):08x}"
    branch = f"z9hG4bK{rng.getrandbits(40):010x}"
    ua = rng.choice(("Linphone/5.2.0", "Zoiper rv2.10", "Asterisk PBX 20.5.0", "MicroSIP/3.21.3"))

    def hdrs(method: str, cseq: int, to_tag: str | None, br: str) -> list[tuple[str, str]]:
        to = f"<sip:{callee if not register else caller}@{domain}>" + (f";tag={to_tag}" if to_tag else "")
        return [
            ("Via", f"SIP/2.0/UDP {c_ip}:5060;branch={br};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{caller}@{domain}>;tag={ftag}"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("User-Agent", ua),
        ]

    if register:
        contact = ("Contact", f"<sip:{caller}@{c_ip}:5060>")
        req = [*hdrs("REGISTER", 1, None, branch), contact, ("Expires", "3600")]
        ex.send(True, sip_message(f"REGISTER sip:{domain} SIP/2.0", req))
        ok = [*hdrs("REGISTER", 1, ttag, branch), ("Contact", f"<sip:{caller}@{c_ip}:5060>;expires=3600")]
        ex.send(False, sip_message("SIP/2.0 200 OK", ok))
        return ex.frames
    sess = rng.getrandbits(32)
    uri = f"sip:{callee}@{domain}"
    contact = ("Contact", f"<sip:{caller}@{c_ip}:5060>")
    ex.send(
        True,
        sip_message(
            f"INVITE {uri} SIP/2.0",
            [*hdrs("INVITE", 1, None, branch), contact],
            sdp(rng, c_ip, rng.randrange(10000, 20000, 2), sess),
        ),
    )
    ex.send(False, sip_message("SIP/2.0 100 Trying", hdrs("INVITE", 1, None, branch)))
    ex.send(
        False,
        sip_message("SIP/2.0 180 Ringing", hdrs("INVITE", 1, ttag, branch)),
        delay_ns=rng.randint(50_000_000, 500_000_000),
    )
    ex.send(
        False,
        sip_message(
            "SIP/2.0 200 OK",
            [*hdrs("INVITE", 1, ttag, branch), ("Contact", f"<{uri}>")],
            sdp(rng, s_ip, rng.randrange(20000, 30000, 2), sess + 1),
        ),
        delay_ns=rng.randint(500_000_000, 3_000_000_000),
    )
    ex.send(
        True, sip_message(f"ACK {uri} SIP/2.0", hdrs("ACK", 1, ttag, f"z9hG4bK{rng.getrandbits(40):010x}"))
    )
    bye_branch = f"z9hG4bK{rng.getrandbits(40):010x}"
    ex.send(
        True,
        sip_message(f"BYE {uri} SIP/2.0", hdrs("BYE", 2, ttag, bye_branch)),
        delay_ns=rng.randint(1_000_000_000, 20_000_000_000),
    )
    ex.send(False, sip_message("SIP/2.0 200 OK", hdrs("BYE", 2, ttag, bye_branch)))
    return ex.frames


@register_flows(
    "sip",
    "SIP/UDP calls (INVITE..BYE with SDP) and REGISTERs",
    "calls or registrations (every 4th is a REGISTER)",
    30,
    mean_gap_ns=50_000_000,
)
def sip_flow(rng: random.Random, i: int) -> Frames:
    """Transaction number i of the sip scenario."""
    return conversation(rng, make_link(rng, NET, i), register=i % 4 == 3)
