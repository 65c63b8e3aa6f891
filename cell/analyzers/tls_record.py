"""One direction of a TLS stream: the record layer and handshake-message reassembly, sans-IO.

`RecordReader.feed(data)` returns the records completed by `data` as `(content_type, length, body)`:
`body` is the fragment for the types whose content we read (handshake, alert, change_cipher_spec,
SSLv2 messages) and None for application data, whose payload is skipped without being buffered (a
bulk transfer costs a header walk per 16 KiB record). Records may be split across segments at any
byte. An SSLv2-format record (2-byte header with the high bit set; SSL 2.0 spec) is accepted as the
first record of a direction, and after it (a client that sent an SSLv2-format hello continues with
TLS records, or with SSLv2 messages if the server answered in SSLv2); it is returned with content
type `SSL2`. The first byte that cannot start a record makes the direction fail with a reason; the
caller decides what that costs (only this direction).

`HandshakeReader.feed(fragment)` turns the fragments of consecutive handshake records into whole
handshake messages `(msg_type, body)`: several messages per record and one message across records.
"""

from __future__ import annotations

MAX_RECORD = (1 << 14) + 2048  # RFC 8446 5.2: 2^14 + 256 for TLSCiphertext; 2^14 + 2048 in TLS 1.2
MAX_HANDSHAKE_MESSAGE = 1 << 18  # certificate chains seen in the wild stay well below 256 KiB
SSL2 = 0x100  # pseudo content type of an SSLv2-format record
_TLS_TYPES = frozenset((20, 21, 22, 23, 24))
_READ_TYPES = frozenset((20, 21, 22, 24))


class RecordError(ValueError):
    """The byte stream is not (or no longer) TLS; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def looks_like_tls(data: bytes) -> bool:
    """Do these first bytes of a direction start a TLS record or an SSLv2-format ClientHello?"""
    if len(data) >= 3 and data[0] in _TLS_TYPES and data[1] == 3 and data[2] <= 4:
        return True
    return len(data) >= 5 and data[0] & 0x80 != 0 and data[2] == 1 and data[3] in (0, 3) and data[4] <= 4


class RecordReader:
    """Record layer of one direction."""

    __slots__ = ("buf", "error", "records", "skip", "v2")

    def __init__(self) -> None:
        self.buf = b""  # a partial header, or a partial record whose body we keep
        self.skip = 0  # bytes of an application-data record still to pass over
        self.records = 0
        self.v2 = False  # the direction started with an SSLv2-format record
        self.error = ""  # why the direction stopped being TLS (then feed returns nothing more)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes | None]]:
        """Records completed by `data`; on bytes that cannot be TLS, sets `error` (records before stand)."""
        out: list[tuple[int, int, bytes | None]] = []
        if self.error:
            return out
        try:
            self._feed(data, out)
        except RecordError as exc:
            self.error = exc.reason
            self.buf = b""
            self.skip = 0
        return out

    def _feed(self, data: bytes, out: list[tuple[int, int, bytes | None]]) -> None:
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
            if not data:
                return
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            if b0 & 0x80 and (self.v2 or self.records == 0):
                length = ((b0 & 0x7F) << 8) | buf[pos + 1]
                if length == 0 or length > MAX_RECORD:
                    raise RecordError("bad_sslv2_record")
                if end - pos - 2 < length:
                    break
                self.v2 = True
                out.append((SSL2, length, buf[pos + 2 : pos + 2 + length]))
                pos += 2 + length
                self.records += 1
                continue
            if end - pos < 5:
                if b0 not in _TLS_TYPES or (end - pos >= 2 and buf[pos + 1] != 3):
                    raise RecordError("not_tls")
                break
            if b0 not in _TLS_TYPES or buf[pos + 1] != 3 or buf[pos + 2] > 4:
                raise RecordError("not_tls")
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if length > MAX_RECORD:
                raise RecordError("record_too_long")
            self.records += 1
            if b0 not in _READ_TYPES:
                out.append((b0, length, None))
                have = end - pos - 5
                if have < length:
                    self.skip = length - have
                    pos = end
                    break
                pos += 5 + length
                continue
            if end - pos - 5 < length:
                self.records -= 1  # counted when complete
                break
            out.append((b0, length, buf[pos + 5 : pos + 5 + length]))
            pos += 5 + length
        self.buf = buf[pos:] if pos < end else b""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished record (non-zero at the end of a flow means a truncated record)."""
        return len(self.buf) + self.skip


class HandshakeReader:
    """Handshake messages from the fragments of one direction's plaintext handshake records."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, fragment: bytes) -> list[tuple[int, bytes]]:
        """Whole handshake messages completed by `fragment`; raises RecordError on an oversized one."""
        buf = self.buf + fragment if self.buf else fragment
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            mlen = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if mlen > MAX_HANDSHAKE_MESSAGE:
                raise RecordError("handshake_too_long")
            if end - pos - 4 < mlen:
                break
            out.append((buf[pos], buf[pos + 4 : pos + 4 + mlen]))
            pos += 4 + mlen
        self.buf = buf[pos:]
        return out
