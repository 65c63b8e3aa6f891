"""Classification with RE2, as SF-TAP's flow abstractor does it (cell/rule_regex.py, cell/classifier.py).

* The bound: the SF-TAP paper's own torrent_tracker rule on 3 KB of adversarial request classifies in
  well under 50 ms (Python's backtracking `re` took 2.5 s on 2 KB and about 11 s on 3 KB).
* SF-TAP's semantics: RE2::PartialMatch (an unanchored search), `dot_nl` on, latin-1 unless `utf8: yes`.
* What RE2 cannot compile (backreferences, lookaround) is one configuration error naming rule and key.
* The first-byte prefilter never changes a verdict (checked against a plain in-order RE2 reference).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from celltap.cell.classifier import Classifier
from celltap.cell.events import MATCH_DOWN, MATCH_NONE, MATCH_UP
from celltap.cell.rule_regex import RulePattern
from celltap.cell.sftap_config import ConfigError, load_config, parse_config
from hypothesis import given, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "celltap" / "defaults" / "sftap.yaml"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _tracker_adversarial(n: int) -> bytes:
    """`GET ` then `announce?info_hash=&` repeated, and never ` HTTP/1.`: every `.*` split fails."""
    return (b"GET " + b"announce?info_hash=&" * (n // 20 + 1))[:n]


def test_torrent_tracker_rule_is_bounded_on_adversarial_input():
    cls = Classifier(load_config(FIXTURES / "figure3.yaml"))
    data = _tracker_adversarial(3072)
    cls.classify_tcp(data, RESPONSE, 40000, 80)  # first use builds RE2's lazy DFA states
    t0 = time.perf_counter()
    rule, _m1, _m2 = cls.classify_tcp(data, RESPONSE, 40000, 80)
    took = time.perf_counter() - t0
    assert took < 0.05, f"classification took {took * 1e3:.1f} ms"
    assert rule is None  # no " HTTP/1." in the request: neither torrent_tracker nor http can match
    # and a well-formed tracker request still lands on the tracker rule (nice 90 before http's 100)
    ok = b"GET /announce?info_hash=%12&peer_id=x HTTP/1.1\r\nHost: t\r\n\r\n"
    assert cls.classify_tcp(ok, RESPONSE, 40000, 80)[0].name == "torrent_tracker"


@pytest.mark.parametrize(
    "key, pattern",
    [
        ("up", r"^(GET|POST) /\1"),  # backreference
        ("down", r"^HTTP(?=/1\.1)"),  # lookahead
        ("up", r"(?<=GET )/announce"),  # lookbehind
        ("down", r"(?<!x)y"),  # negative lookbehind
        ("up", r"(unclosed"),
    ],
)
def test_what_re2_cannot_compile_is_a_config_error(key, pattern):
    doc = {"tracker": {"proto": "TCP", "up": "^GET ", "down": "^HTTP/", key: pattern}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    msg = str(info.value)
    assert msg.startswith(f"tracker.{key}: RE2 cannot compile") and "\n" not in msg


def test_cli_reports_an_re2_error_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tracker": {"proto": "TCP", "if": "t", "up": r"^(a)\1", "down": "^H"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "cell", "--config", str(bad), "--read", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "tracker.up: RE2 cannot compile" in lines[0], lines


def _classifier(**rules: dict) -> Classifier:
    return Classifier(parse_config({name: {"proto": "TCP", **r} for name, r in rules.items()}))


def test_partial_match_is_a_search():
    """SF-TAP calls RE2::PartialMatch: a pattern without ^ is found anywhere in the first bytes."""
    cls = _classifier(tracker={"up": "info_hash=", "down": "^HTTP/1\\.[01] 200"})
    req = b"GET /scrape?info_hash=%12 HTTP/1.0\r\n\r\n"
    assert cls.classify_tcp(req, RESPONSE, 40000, 80)[1:] == (MATCH_UP, MATCH_DOWN)
    assert cls.classify_tcp(RESPONSE, req, 80, 40000)[1:] == (MATCH_DOWN, MATCH_UP)
    assert cls.classify_tcp(b"GET / HTTP/1.0\r\n\r\n", RESPONSE, 40000, 80)[0] is None


def test_dot_matches_newline_and_bytes_are_latin1():
    """SF-TAP: set_dot_nl(true), set_utf8(false) unless `utf8: yes`."""
    assert RulePattern("^A.B").search(b"A\nB")
    latin = RulePattern("^\u00e9t\u00e9")  # "été": one byte per character in latin-1
    assert latin.search(b"\xe9t\xe9") and not latin.search("été".encode())
    utf8 = RulePattern("^\u00e9t\u00e9", utf8=True)
    assert utf8.search("été".encode()) and not utf8.search(b"\xe9t\xe9")
    assert RulePattern("^\\x16\\x03[\\x00-\\x04]..\\x01").search(bytes.fromhex("1603010a0a01"))  # 0x0a = \n
    cfg = parse_config({"u8": {"proto": "TCP", "up": "^\u00e9", "utf8": "yes", "down": "^x"}})
    assert cfg.rules[0].up.search("é".encode())


def test_case_insensitive_flag_reaches_the_prefilter():
    """`(?i)^ehlo` was rejected by the old first-byte prefilter before the regex ran (issue 13)."""
    cls = _classifier(smtp={"up": "(?i)^(EH|HE)LO ", "down": "^220[ -]"})
    for hello in (b"ehlo client\r\n", b"EHLO client\r\n", b"eHlO client\r\n", b"helo client\r\n"):
        assert cls.classify_tcp(hello, b"220 mx ESMTP\r\n", 40000, 25)[0] is not None, hello
    assert cls.classify_tcp(b"QUIT\r\n", b"220 mx ESMTP\r\n", 40000, 25)[0] is None


def test_packaged_default_smtp_rule_takes_any_case():
    """The embedded celltap/defaults/sftap.yaml: SMTP commands are case-insensitive (RFC 5321 2.4)."""
    cfg = load_config(DEFAULT_CONFIG)
    cls = Classifier(cfg)
    banner = b"220 mx.example ESMTP Postfix\r\n"
    for hello in (b"ehlo client.example\r\n", b"EHLO client.example\r\n", b"helo client.example\r\n"):
        rule, m1, m2 = cls.classify_tcp(hello, banner, 40000, 25)
        assert rule is not None and rule.name == "smtp" and (m1, m2) == (MATCH_UP, MATCH_DOWN), hello


# ------------------------------------------------------------------ the prefilter changes no verdict
PATTERNS = [
    r"^[-a-zA-Z]+ .+ HTTP/1\.(0\r?\n|1\r?\n([-a-zA-Z]+: .+\r?\n)+)",
    r"^HTTP/1\.[01] [1-9][0-9]{2} .+\r?\n",
    r"^GET .*(announce|scrape).*\?.*info_hash=.+&.+ HTTP/1\.(0\r?\n|1\r?\n([-a-zA-Z]+: .+\r?\n)+)",
    r"^\x16\x03[\x00-\x04]..\x01",
    r"(?i)^(EH|HE)LO .+\r\n",
    r"(?i)^ehlo",
    r"^220[ -].+\r\n",
    r"^SSH-[12]\.[0-9]+-.+\r?\n",
    r"^a|b",
    r"(?m)^abc",
    r"^(?i:x)y",
    r"\Afoo",
    r"^[^a]",
    r"^\xff\xfe",
    r"^$",
    r"announce",
]
EXAMPLES = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"GET /announce?info_hash=1&b HTTP/1.0\r\n",
    bytes.fromhex("1603010a0a01"),
    b"ehlo x\r\n",
    b"HELO x\r\n",
    b"220 mx\r\n",
    b"SSH-2.0-x\r\n",
    b"a",
    b"b",
    b"zz\nabc",
    b"Xy",
    b"foo",
    b"q",
    b"\xff\xfe",
    b"",
]


@pytest.mark.parametrize("text", PATTERNS)
def test_first_bytes_cover_every_match(text):
    """Every example with every first byte (and case swapped): a match always starts in `first`."""
    p = RulePattern(text)
    for ex in EXAMPLES:
        for variant in {ex, ex.swapcase()}:
            for b in range(256):
                data = bytes([b]) + variant[1:] if variant else bytes([b])
                if p.search(data):
                    assert p.first is None or data[0] in p.first, (text, data)


def _reference(rules, h1: bytes, h2: bytes, p1: int, p2: int):
    """Classification as the module docstring states it, regex by regex, no prefilter, no sets."""
    for r in rules:
        if r.ports and not r.port_match(p1, p2):
            continue
        if not r.has_regex:
            return r.name, MATCH_NONE, MATCH_NONE
        if (r.up is None or r.up.search(h1)) and (r.down is None or r.down.search(h2)):
            return r.name, MATCH_UP, MATCH_DOWN
        if (r.up is None or r.up.search(h2)) and (r.down is None or r.down.search(h1)):
            return r.name, MATCH_DOWN, MATCH_UP
    return None


_CFG = parse_config(
    {
        **yaml.safe_load((FIXTURES / "cell_full.yaml").read_text()),
        "smtp_any_case": {"proto": "TCP", "up": "(?i)^(EH|HE)LO ", "down": "^220", "nice": 50},
        "search": {"proto": "TCP", "up": "info_hash=", "down": "(?m)^Server: ", "nice": 60},
        "one_sided": {"proto": "TCP", "up": "^PING", "nice": 70},
    }
)
_CLS = Classifier(_CFG)
_head = st.one_of(
    st.sampled_from([*EXAMPLES, RESPONSE + b"Server: x\r\n", b"PING 1\r\n"]),
    st.binary(max_size=24),
    st.tuples(st.sampled_from(EXAMPLES), st.integers(0, 255)).map(lambda t: bytes([t[1]]) + t[0][1:]),
    st.sampled_from(EXAMPLES).map(bytes.swapcase),
)


@settings(max_examples=400, deadline=None)
@given(h1=_head, h2=_head, ports=st.sampled_from([(40000, 80), (40000, 53), (25, 40000)]))
def test_classifier_agrees_with_the_reference(h1, h2, ports):
    rule, m1, m2 = _CLS.classify_tcp(h1, h2, *ports)
    got = (rule.name, m1, m2) if rule is not None else None
    want = _reference(_CLS.tcp, h1, h2, *ports)
    if want is None and _CLS.tcp_default is not None:
        want = (_CLS.tcp_default.name, MATCH_NONE, MATCH_NONE)
    assert got == want


@pytest.mark.parametrize("text", PATTERNS)
def test_search_is_re2_partial_match(text):
    """RulePattern.search (compiled ungreedy, see cell/rule_regex.py) says what RE2 itself says about
    the pattern as written, with SF-TAP's options: a match somewhere, or none."""
    import re2

    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1
    opts.dot_nl = True
    plain = re2.compile(text.encode("latin-1"), opts)
    p = RulePattern(text)
    for ex in [*EXAMPLES, RESPONSE, b"xx" + RESPONSE, b"GET /announce?info_hash=1&2 HTTP/1.0\r\n" * 3]:
        for data in {ex, ex.swapcase(), ex[:-1], b"\n" + ex}:
            assert p.search(data) == (plain.search(data) is not None), (text, data)
