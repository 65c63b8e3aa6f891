"""TLS analyzer: Zeek's ssl.log and x509.log from the cleartext part of each TLS connection.

Theory of operation. Each direction of a TCP flow is read on its own (`_Side`): a direction whose
first bytes are a TLS record or an SSLv2-format ClientHello goes to its record layer
(cell.analyzers.tls_record); one that starts in plaintext goes to the STARTTLS scanner
(cell.analyzers.tls_starttls), which hands both directions to their record layers after a STARTTLS /
STLS / AUTH TLS / <starttls/> command and its positive reply. A direction that stops being TLS (or
never was) fails alone: the other direction is still read (a server banner before a ClientHello
costs the server's side, not the client's hello).

Records of plaintext handshake messages are reassembled into messages (several per record, one
across records and segments): ClientHello (several per flow after a HelloRetryRequest; the last one
is reported), ServerHello, Certificate (TLS <= 1.2; in 1.3 it is encrypted), ServerKeyExchange (the
ECDHE curve in <= 1.2). ChangeCipherSpec marks a direction encrypted; in TLS 1.3 the server's
records after the ServerHello are encrypted. `established` follows Zeek: the handshake completed in
both directions, i.e. in <= 1.2 each side sent its (encrypted) Finished after its ChangeCipherSpec,
in 1.3 the server sent encrypted records and the client an encrypted record after the ServerHello
that is not of an encrypted alert's size (19 bytes with a 16-byte AEAD tag, 11 with CCM_8).
Renegotiation in <= 1.2 is encrypted: it is only seen as encrypted handshake records after the
Finished, counted and reported as a weird record at the end of the flow.

One ssl record per connection, written (as Zeek does) when the handshake is established, otherwise
when the flow ends. x509 records (`"_log": "x509"`) are written when the Certificate message is
read. Fields Zeek would leave unset are omitted; `resumed` and `established` are always present.
Problems are counted (`error(reason)`) and written once per flow and reason as weird records.
"""

from __future__ import annotations

from celltap.cell.analyzers.conn_id import conn_fields
from celltap.cell.analyzers.tls_hello import (
    TlsError,
    parse_client_hello,
    parse_server_hello,
    parse_sslv2_client_hello,
)
from celltap.cell.analyzers.tls_names import alert_name, cipher_name, group_name, version_name
from celltap.cell.analyzers.tls_record import SSL2, HandshakeReader, RecordReader, looks_like_tls
from celltap.cell.analyzers.tls_starttls import StartTls
from celltap.cell.analyzers.tls_x509 import parse_certificate_list, x509_fields
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

_CERT_FIELDS = (
    "cert_chain_fps",
    "client_cert_chain_fps",
    "subject",
    "issuer",
    "client_subject",
    "client_issuer",
)
MAX_HISTORY = 100  # Zeek's SSL::max_ssl_history_length
_ALERT13_SIZES = (19, 11)  # an encrypted TLS 1.3 alert: 2 bytes + content type + AEAD tag (16 or 8)
# Zeek's ssl_history letters per handshake message type (upper case when the client sent it)
_LETTERS = {
    0: "h",
    1: "c",
    2: "s",
    3: "v",
    4: "t",
    5: "e",
    6: "j",
    8: "o",
    11: "x",
    12: "k",
    13: "r",
    14: "n",
    15: "y",
    16: "g",
    20: "f",
    21: "w",
    22: "u",
    23: "a",
    24: "p",
    254: "m",
}


class _Side:
    """One direction: how its bytes are read, and what it has shown of the handshake."""

    __slots__ = ("app", "enc_hs", "encrypted", "head", "hs", "mode", "reader")

    def __init__(self) -> None:
        self.mode = "new"  # new | tls | plain | failed | done
        self.head = b""  # first bytes, until there are enough to tell TLS from plaintext
        self.reader = RecordReader()
        self.hs = HandshakeReader()
        self.encrypted = False  # after this side's ChangeCipherSpec (or TLS 1.3 keys)
        self.enc_hs = 0  # handshake records after encryption started (the first is Finished)
        self.app = 0  # application-data records (TLS 1.3: non-alert-sized ones after the ServerHello)


class TlsFlow:
    """One TCP flow's TLS state."""

    __slots__ = (
        "analyzer",
        "ch",
        "client",
        "client_hellos",
        "client_kex",
        "fields",
        "flow",
        "history",
        "hrr",
        "renegotiations",
        "reported",
        "sh",
        "sides",
        "starttls",
        "tls13",
        "ts",
        "weirds",
    )

    def __init__(self, analyzer: TlsAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.ts: float | None = None  # time of the first TLS record
        self.sides = {1: _Side(), 2: _Side()}
        self.client = 0
        self.ch: dict | None = None
        self.sh: dict | None = None
        self.client_hellos = 0
        self.client_kex = False
        self.hrr = False
        self.tls13 = False
        self.history: list[str] = []
        self.fields: dict = {}  # ssl.log fields learnt from messages other than the hellos
        self.starttls: StartTls | None = None
        self.renegotiations = 0
        self.reported = False
        self.weirds: set[str] = set()

    # ------------------------------------------------------------------ stream input
    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        side = self.sides[sender]
        mode = side.mode
        if mode == "tls":
            self._tls(sender, side, data, time)
            return
        if mode == "new":
            head = side.head + data
            if len(head) < 5 and not looks_like_tls(head):
                side.head = head
                return
            side.head = b""
            if looks_like_tls(head):
                side.mode = "tls"
                self._tls(sender, side, head, time)
                return
            side.mode = "plain"
            if self.starttls is None:
                self.starttls = StartTls()
            data = head
        elif mode == "plain" and self.sides[3 - sender].mode == "tls" and looks_like_tls(data):
            # a banner (or other plaintext) before this side's hello, the other side speaking TLS
            # without a STARTTLS: its records start here
            side.mode = "tls"
            self._tls(sender, side, data, time)
            return
        if side.mode == "plain" and self.starttls is not None:
            switched = self.starttls.feed(sender, data)
            if switched is not None:
                self.fields["starttls"] = True
                for d, rest in sorted(switched.items()):
                    s = self.sides[d]
                    if s.mode in ("plain", "new"):
                        s.mode = "tls"
                        if rest:
                            self._tls(d, s, rest, time)

    def _tls(self, sender: int, side: _Side, data: bytes, time: float) -> None:
        reader = side.reader
        for ctype, length, body in reader.feed(data):
            if side.mode != "tls":
                return  # this direction failed (or is done): the rest of its bytes are not read
            if self.ts is None:
                self.ts = time
            self._record(sender, side, ctype, length, body, time)
        if reader.error and side.mode == "tls":
            side.mode = "failed"
            self._weird(reader.error, time)

    # ------------------------------------------------------------------ records
    def _record(
        self, sender: int, side: _Side, ctype: int, length: int, body: bytes | None, time: float
    ) -> None:
        if ctype == 23:
            if not self._final_sh():
                return  # early data before the ServerHello
            if sender == self.client:
                if not self.tls13 or length not in _ALERT13_SIZES:
                    side.app += 1
            else:
                side.app += 1
            self._check_established(time)
            return
        assert body is not None
        if ctype == 22:
            if side.encrypted:
                side.enc_hs += 1
                if side.enc_hs > 1:
                    self.renegotiations += 1
                self._check_established(time)
                return
            try:
                messages = side.hs.feed(body)
            except ValueError as exc:
                self._fail(sender, side, getattr(exc, "reason", "bad_handshake"), time)
                return
            for mtype, mbody in messages:
                if side.mode != "tls":
                    return
                self._handshake(sender, side, mtype, mbody, time)
        elif ctype == 20:
            self._letter(sender, "i")
            if not self._final_sh():
                return  # TLS 1.3 middlebox compatibility: a CCS around a HelloRetryRequest
            if sender == self.client and not side.encrypted:
                self._ticket_resumption()
            side.encrypted = True
            self._check_established(time)
        elif ctype == 21:
            if not side.encrypted and not (self.tls13 and sender != self.client) and len(body) == 2:
                self._letter(sender, "l")
                self.fields["last_alert"] = alert_name(body[1])
        elif ctype == 24:
            self._letter(sender, "b")
        elif ctype == SSL2:
            self._sslv2(sender, side, body, time)

    def _handshake(self, sender: int, side: _Side, mtype: int, body: bytes, time: float) -> None:
        try:
            if mtype == 1:
                self._client_hello(sender, parse_client_hello(body))
            elif mtype == 2:
                self._server_hello(sender, side, parse_server_hello(body))
            elif mtype == 11:
                self._letter(sender, "x")
                self._certificates(sender, parse_certificate_list(body), time)
            elif mtype == 12:
                self._letter(sender, "k")
                self._server_key_exchange(body)
            else:
                if mtype == 16:
                    self.client_kex = True
                self._letter(sender, _LETTERS.get(mtype, "z"))
        except TlsError as exc:
            self._fail(sender, side, exc.reason, time)

    def _client_hello(self, sender: int, ch: dict) -> None:
        if not self.client:
            self.client = sender
        self._letter(sender, "c")
        self.ch = ch
        self.client_hellos += 1

    def _server_hello(self, sender: int, side: _Side, sh: dict) -> None:
        if not self.client:
            self.client = 3 - sender
        self.hrr = sh["hrr"]
        self._letter(sender, "j" if sh["hrr"] else "s")
        self.sh = sh
        version = sh.get("selected_version") or sh["version"]
        if "key_share_group" in sh:
            self.fields["curve"] = group_name(sh["key_share_group"])
        if sh["hrr"]:
            self.fields["hello_retry"] = True
            return  # the client answers with a second ClientHello; the server's next hello is final
        ch = self.ch or {}
        if version == 0x0304:
            self.tls13 = True
            side.encrypted = True  # every server record after the ServerHello is protected
            if sh.get("psk_accepted") and 41 in ch.get("extensions", ()):
                self.fields["resumed"] = True
        else:
            sid = ch.get("session_id") or b""
            if sid and sid.strip(b"\0") and sid == sh["session_id"]:
                self.fields["resumed"] = True

    def _final_sh(self) -> bool:
        return self.sh is not None and not self.sh["hrr"]

    def _ticket_resumption(self) -> None:
        # Zeek: a client that sent a non-empty session ticket with an empty session id, and changed
        # cipher spec without a ClientKeyExchange, resumed
        ch = self.ch
        if ch and ch.get("session_ticket") and not ch.get("session_id") and not self.client_kex:
            self.fields["resumed"] = True

    def _certificates(self, sender: int, ders: list[bytes], time: float) -> None:
        if not ders:
            return  # an empty Certificate (a client asked for one that has none): Zeek sets nothing
        is_server = sender != self.client
        fps = []
        for i, der in enumerate(ders):
            rec = conn_fields(self.flow, self.client or 1, time)
            rec["_log"] = "x509"
            rec.update(x509_fields(der))
            rec["host_cert"] = is_server
            rec["client_cert"] = not is_server
            fps.append(rec["fingerprint"])
            if "parse_error" in rec:
                self._weird("x509_parse_error", time)
            if i == 0:
                prefix = "" if is_server else "client_"
                if "certificate.subject" in rec:
                    self.fields[prefix + "subject"] = rec["certificate.subject"]
                    self.fields[prefix + "issuer"] = rec["certificate.issuer"]
            self.analyzer.records.append(rec)
        self.fields["cert_chain_fps" if is_server else "client_cert_chain_fps"] = fps

    def _server_key_exchange(self, body: bytes) -> None:
        # RFC 8422 5.4: ECParameters (curve_type 3 = named_curve, NamedCurve) open an ECDHE key exchange
        sh = self.sh
        if sh is None or len(body) < 3 or body[0] != 3:
            return
        name = cipher_name(sh["cipher_suite"])
        if "_ECDHE_" in name or "_ECDH_anon_" in name:
            self.fields["curve"] = group_name(int.from_bytes(body[1:3], "big"))

    def _sslv2(self, sender: int, side: _Side, body: bytes, time: float) -> None:
        """SSLv2 messages: CLIENT-HELLO (1), CLIENT-MASTER-KEY (2, the chosen cipher), SERVER-HELLO (4)."""
        kind = body[0] if body else -1
        try:
            if kind == 1:
                self._client_hello(sender, parse_sslv2_client_hello(body))
            elif kind == 4 and len(body) >= 11:
                if not self.client:
                    self.client = 3 - sender
                self._letter(sender, "s")
                version = int.from_bytes(body[3:5], "big")
                cert_len = int.from_bytes(body[5:7], "big")
                self.fields["sslv2_version"] = version
                if cert_len and 11 + cert_len <= len(body):
                    self._certificates(sender, [body[11 : 11 + cert_len]], time)
            elif kind == 2 and len(body) >= 4:
                self.fields["sslv2_cipher"] = int.from_bytes(body[1:4], "big")
                for s in self.sides.values():  # everything after CLIENT-MASTER-KEY is encrypted
                    if s.mode == "tls":
                        s.mode = "done"
        except TlsError as exc:
            self._fail(sender, side, exc.reason, time)

    # ------------------------------------------------------------------ state and output
    def _letter(self, sender: int, letter: str) -> None:
        if len(self.history) < MAX_HISTORY:
            client = sender == self.client if self.client else letter == "c"
            self.history.append(letter.upper() if client else letter)

    def _check_established(self, time: float) -> None:
        if self.reported or not self.client or not self._final_sh():
            return
        c, s = self.sides[self.client], self.sides[3 - self.client]
        if self.tls13:
            done = s.app > 0 and c.app > 0
        else:
            done = c.enc_hs > 0 and s.enc_hs > 0
        if done:
            self.fields["established"] = True
            self._report(time)
            if self.tls13:  # nothing more to learn: stop reading
                for side in self.sides.values():
                    side.mode = "done"

    def _fail(self, sender: int, side: _Side, reason: str, time: float) -> None:
        side.mode = "failed"
        self._weird(reason, time)

    def _weird(self, name: str, time: float, addl: str = "") -> None:
        self.analyzer.error(name)
        if name in self.weirds:
            return
        self.weirds.add(name)
        rec = conn_fields(self.flow, self.client or 1, time)
        rec["_log"] = "weird"
        rec["name"] = name
        if addl:
            rec["addl"] = addl
        self.analyzer.records.append(rec)

    def _report(self, time: float) -> None:
        self.reported = True
        self.analyzer.records.append(self.record(time))

    def record(self, time: float) -> dict:
        """The ssl.log record of what this flow has shown so far."""
        rec = conn_fields(self.flow, self.client or 1, self.ts if self.ts is not None else time)
        f = self.fields
        ch, sh = self.ch, self.sh
        if sh is not None:
            rec["version"] = version_name(sh.get("selected_version") or sh["version"])
            rec["cipher"] = cipher_name(sh["cipher_suite"])
        elif "sslv2_version" in f:
            rec["version"] = version_name(f["sslv2_version"])
            if "sslv2_cipher" in f:
                rec["cipher"] = cipher_name(f["sslv2_cipher"])
        if "curve" in f:
            rec["curve"] = f["curve"]
        if ch is not None and ch.get("sni"):
            rec["server_name"] = ch["sni"]
        rec["resumed"] = f.get("resumed", False)
        if "last_alert" in f:
            rec["last_alert"] = f["last_alert"]
        if sh is not None and sh.get("alpn"):
            rec["next_protocol"] = sh["alpn"]
        rec["established"] = f.get("established", False)
        rec["ssl_history"] = "".join(self.history)
        for key in _CERT_FIELDS:
            if key in f:
                rec[key] = f[key]
        if ch is not None:
            _client_extras(rec, ch)
            rec["client_hellos"] = self.client_hellos
        if sh is not None:
            _server_extras(rec, sh)
        if f.get("hello_retry"):
            rec["hello_retry"] = True
        if f.get("starttls"):
            rec["starttls"] = True
        return rec

    def end(self, reason: str, time: float) -> None:
        """The flow ended: report what was seen, and count what was cut short or never became TLS."""
        for side in self.sides.values():
            if side.mode == "tls" and (side.reader.pending or side.hs.buf):
                self._weird("truncated_record", time)
            elif side.mode == "plain" or (side.mode == "new" and side.head):
                self._weird("not_tls", time)
        if self.renegotiations:
            self._weird("tls_encrypted_renegotiation", time, str(self.renegotiations))
        if not self.reported and (
            self.ch is not None or self.sh is not None or "sslv2_version" in self.fields
        ):
            self._report(time)


def _client_extras(rec: dict, ch: dict) -> None:
    """ClientHello fields: Zeek's ssl-log-ext names where Zeek has them, plus JA3/JA4."""
    rec["client_version"] = ch["version"]
    rec["client_ciphers"] = ch["cipher_suites"]
    rec["ssl_client_exts"] = ch["extensions"]
    if ch["supported_groups"]:
        rec["client_curves"] = ch["supported_groups"]
    if ch["ec_point_formats"]:
        rec["point_formats"] = ch["ec_point_formats"]
    if ch.get("alpn"):
        rec["orig_alpn"] = ch["alpn"]
    if ch["supported_versions"]:
        rec["client_supported_versions"] = ch["supported_versions"]
    if "key_share_groups" in ch:
        rec["client_key_share_groups"] = ch["key_share_groups"]
    if "psk_key_exchange_modes" in ch:
        rec["psk_key_exchange_modes"] = ch["psk_key_exchange_modes"]
    if ch["signature_algorithms"]:
        rec["signature_algorithms"] = ch["signature_algorithms"]
    if ch.get("sslv2_format"):
        rec["sslv2_client_hello"] = True
    rec["ja3"] = ch["ja3"]
    rec["ja4"] = ch["ja4"]


def _server_extras(rec: dict, sh: dict) -> None:
    rec["server_version"] = sh["version"]
    rec["ssl_server_exts"] = sh["extensions"]
    if "selected_version" in sh:
        rec["server_supported_version"] = sh["selected_version"]
    if "key_share_group" in sh:
        rec["server_key_share_group"] = sh["key_share_group"]
    rec["ja3s"] = sh["ja3s"]
    rec["ja4s"] = sh["ja4s"]


class TlsAnalyzer(FlowAnalyzer):
    """Analyzer factory for TLS flows."""

    name = "tls"
    # every parse-error reason this analyzer counts (tests/deploy/test_metrics_at_start.py checks the list)
    error_reasons = (
        "not_tls",
        "bad_sslv2_record",
        "record_too_long",
        "handshake_too_long",
        "truncated_record",
        "bad_handshake",
        "bad_client_hello",
        "bad_sslv2_client_hello",
        "bad_server_hello",
        "bad_extension",
        "bad_extensions",
        "bad_certificate_message",
        "x509_parse_error",
        "tls_encrypted_renegotiation",
    )

    def stream(self, flow: FlowId, time: float) -> TlsFlow:
        """Start parsing a new TCP flow."""
        return TlsFlow(self, flow, time)
