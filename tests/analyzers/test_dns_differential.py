"""Our DNS parser against dnspython on messages dnspython itself writes (compressed names, many RR types,
EDNS options): hypothesis draws the content, dnspython encodes it and decodes it back, and every
field we report must equal dnspython's reading (rendered by the oracle's independent rules)."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rrset
from celltap.cell.analyzers.dns_message import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.analyzers import dns_oracle

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(lambda labels: ".".join(labels) + ".example.")
RDATA = {
    "A": st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    "AAAA": st.sampled_from(["2001:db8::1", "::1", "fe80::1:2:3:4", "2001:db8:0:1::abcd"]),
    "CNAME": NAME,
    "NS": NAME,
    "PTR": NAME,
    "MX": st.tuples(st.integers(0, 65535), NAME).map(lambda t: f"{t[0]} {t[1]}"),
    "SRV": st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(1, 65535), NAME).map(
        lambda t: f"{t[0]} {t[1]} {t[2]} {t[3]}"
    ),
    "SOA": st.tuples(NAME, NAME).map(lambda t: f"{t[0]} {t[1]} 1 7200 900 1209600 300"),
    "TXT": st.lists(st.text(alphabet="abc xyz=;0123", max_size=40), min_size=1, max_size=3).map(
        lambda ss: " ".join(f'"{s}"' for s in ss)
    ),
    "CAA": st.sampled_from(['0 issue "ca.example"', '128 iodef "mailto:x@example"']),
    "DS": st.sampled_from(["60485 5 1 2bb183af5f22588179a53b0a98631fad1a292118"]),
}
RR = st.sampled_from(sorted(RDATA)).flatmap(
    lambda t: st.tuples(st.just(t), NAME, RDATA[t], st.integers(0, 86400))
)
OPTIONS = st.lists(
    st.sampled_from(
        [
            dns.edns.ECSOption("198.51.100.0", 24),
            dns.edns.ECSOption("2001:db8::", 48),
            dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8))),
            dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(24))),
            dns.edns.GenericOption(dns.edns.OptionType.NSID, b"ns-1"),
            dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(17)),
            dns.edns.EDEOption(dns.edns.EDECode.STALE_ANSWER, "old"),
        ]
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    qname=NAME,
    answers=st.lists(RR, max_size=6),
    auth=st.lists(RR, max_size=2),
    options=OPTIONS,
    edns=st.booleans(),
)
def test_parser_equals_dnspython(qname: str, answers: list, auth: list, options: list, edns: bool) -> None:
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else None, options=options if edns else None)
    r = dns.message.make_response(q)
    for section, rrs in ((r.answer, answers), (r.authority, auth)):
        for rtype, owner, text, ttl in rrs:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    wire = r.to_wire()  # dnspython compresses names
    ours = parse_message(wire)
    assert not ours["weird"] and ours["trailing"] == 0
    theirs = dns.message.from_wire(wire, one_rr_per_rrset=True)
    assert ours["questions"] == [(qname.rstrip(".").lower(), 1, 1)]
    expect = [(dns_oracle.rdata_text(rd), rrset.ttl) for rrset in theirs.answer for rd in rrset]
    assert [(a[4], a[3]) for a in ours["answers"]] == expect
    owners = [rrset.name.to_text(omit_final_dot=True) for rrset in theirs.answer for _ in rrset]
    assert [a[0] for a in ours["answers"]] == owners
    assert [a[4] for a in ours["auth"]] == [dns_oracle.rdata_text(rd) for rs in theirs.authority for rd in rs]
    if edns:
        expected_edns = dns_oracle._edns(theirs)
        assert ours["edns"] == expected_edns
    else:
        assert ours["edns"] is None
