"""SMTP analyzer: one Zeek smtp.log-style record per mail transaction, with the server's replies tracked.

Theory of operation. The server speaks first (220 banner), so the endpoint whose first bytes are a
reply code is the server (the originator is the other one). Each command the client sends is queued;
each complete server reply (multiline replies are one reply, `smtp_replies`) answers the oldest
queued command, so PIPELINING (a batch of commands, then a batch of replies) pairs in order. A
command's effect is applied when its reply arrives: an address is listed under `mailfrom`/`rcptto`
only if the server accepted it (2xx), else under `mailfrom_rejected`/`rcptto_rejected`; the message's
fate (`msg_accepted`) is the reply to the end of data. Commands after which the client must wait for
the reply (DATA, STARTTLS, AUTH and the client's AUTH responses) stop the client's stream: its later
bytes are held (at most `MAX_HELD`) until the reply says what they are: the message (354), TLS (220
to STARTTLS: everything after it, both directions, is handed on to the L7 loopback with
`hand_on`), an AUTH response (334; those lines are not commands), or commands again (any refusal).
A flow whose server has sent nothing (one direction captured) is parsed without waiting: every
command counts as unanswered (addresses listed, `last_reply` absent).

Message content is un-dot-stuffed (DATA) or taken by exact length (BDAT chunks) and streamed into a
bounded MIME scanner (`smtp_mime`): headers and part headers parsed with `email`, bodies only
counted. A transaction (MAIL .. end of data, RSET or a new MAIL) becomes a record once the client
has closed it and every command of it has its reply; records leave in transaction order. Memory per
flow is bounded whatever the peer sends: command lines (`MAX_LINE`), held bytes, queued commands
(`MAX_PENDING`), recipients (`MAX_RCPT`) and the scanner's own bounds.
"""

from __future__ import annotations

import hashlib
from collections import deque

from celltap.cell.analyzers.conn_id import conn_fields
from celltap.cell.analyzers.smtp_commands import auth_user, bdat_args, path_address, split_command
from celltap.cell.analyzers.smtp_fields import header_fields
from celltap.cell.analyzers.smtp_mime import MessageScanner
from celltap.cell.analyzers.smtp_replies import Reply, ReplyReader
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

MAX_LINE = 4096  # RFC 5321 allows 512 (1000 with extensions); a longer command line is skipped
MAX_HELD = 64 * 1024  # client bytes held while waiting for the reply to DATA/STARTTLS/AUTH
MAX_PENDING = 10_000  # commands awaiting a reply
MAX_RCPT = 1000  # Zeek's max_rcptto_addresses
MAX_AUTH_RESPONSES = 8  # SASL responses kept (to find the user name), each at most MAX_LINE
MAX_UNDRAINED = 16 * 1024 * 1024  # hand-on bytes kept for a front end that does not drain them

COMMANDS, MESSAGE, CHUNK, ENCRYPTED, CLOSED, BROKEN = range(6)
BLOCKING = frozenset({"DATA", "STARTTLS", "AUTH", "AUTH_DATA"})
KNOWN_VERBS = frozenset(
    "HELO EHLO MAIL RCPT DATA BDAT RSET QUIT NOOP VRFY EXPN HELP STARTTLS AUTH TURN ETRN XCLIENT".split()
)
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def file_id(uid: str, record: int, entity: int) -> str:
    """A stable Zeek-style file id (F + 17 base62 characters) for one MIME entity of one record."""
    n = int.from_bytes(hashlib.blake2b(f"{uid}/{record}/{entity}".encode(), digest_size=13).digest(), "big")
    out = []
    for _ in range(17):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "F" + "".join(out)


class Transaction:
    """What one mail transaction (or the session before the first one) has said and been answered."""

    __slots__ = (
        "activity",
        "closed",
        "commands",
        "helo",
        "last_reply",
        "mail_seen",
        "mailfrom",
        "mailfrom_rejected",
        "msg",
        "msg_accepted",
        "msg_failed",
        "msg_ts",
        "pending",
        "rcptto",
        "rcptto_rejected",
        "tls",
        "trans_depth",
        "ts",
    )

    def __init__(self, ts: float, trans_depth: int, helo: str | None) -> None:
        self.ts = ts
        self.trans_depth = trans_depth
        self.helo = helo
        self.activity = False  # a command Zeek counts as client activity (MAIL, RCPT, DATA, ...)
        self.commands = 0
        self.closed = False  # the client ended it (end of data, RSET, new MAIL, QUIT, STARTTLS)
        self.pending = 0  # its commands still awaiting a reply
        self.mail_seen = False
        self.mailfrom: str | None = None
        self.mailfrom_rejected: str | None = None
        self.rcptto: list[str] = []
        self.rcptto_rejected: list[str] = []
        self.msg: MessageScanner | None = None
        self.msg_ts = ts
        self.msg_accepted: bool | None = None
        self.msg_failed = False  # a BDAT chunk was refused
        self.last_reply: str | None = None
        self.tls = False


class SmtpFlow:
    """One SMTP session (both directions of one TCP flow)."""

    __slots__ = (
        "analyzer",
        "auth",
        "auth_expect",
        "blocked",
        "cbuf",
        "chunk_last",
        "chunk_left",
        "client",
        "flow",
        "held",
        "held_time",
        "helo",
        "idle",
        "line_start",
        "messages",
        "mode",
        "peek_tls",
        "pending",
        "reader",
        "records",
        "server_seen",
        "skipping",
        "start",
        "txn",
        "txn_count",
        "txns",
        "weirds_seen",
    )

    def __init__(self, analyzer: SmtpAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.start = time
        self.client = 0
        self.mode = COMMANDS
        self.reader = ReplyReader()
        self.cbuf = b""
        self.skipping = False
        self.held = b""
        self.held_time = time
        self.blocked = False
        self.server_seen = False
        self.peek_tls = False
        self.line_start = True
        self.chunk_left = 0
        self.chunk_last = False
        self.pending: deque[tuple[str, object, Transaction | None]] = deque([("CONNECT", None, None)])
        self.helo: str | None = None
        self.auth: dict | None = None  # mechanism, responses, success
        self.auth_expect = False
        self.messages = 0  # messages whose content the client finished sending
        self.records = 0  # records emitted
        self.txn: Transaction | None = None
        self.txn_count = 0
        self.idle: Transaction | None = None
        self.txns: deque[Transaction] = deque()  # transactions not yet emitted, oldest first
        self.weirds_seen: set[str] = set()

    # ---------------------------------------------------------------- input

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        if self.mode in (BROKEN, CLOSED) or not data:
            return
        if not self.client:
            # A reply code first means the sender is the server (the normal case: the 220 banner).
            self.client = 3 - sender if data[:3].isdigit() else sender
        if self.mode == ENCRYPTED:
            self.analyzer.hand_on(self.flow, sender, data, time)
        elif sender == self.client:
            self._client(data, time)
        else:
            self._server(data, time)

    def _server(self, data: bytes, time: float) -> None:
        self.server_seen = True
        reader = self.reader
        reader.push(data)
        while self.mode not in (BROKEN, CLOSED):
            reply = reader.next_reply()
            if reply is None:
                break
            self._reply(reply, time)
            if self.mode == ENCRYPTED:
                rest = reader.take_rest()
                if rest:
                    self.analyzer.hand_on(self.flow, 3 - self.client, rest, time)
                break
        for name in reader.weirds:
            self._weird(name, time)
        reader.weirds.clear()

    def _client(self, data: bytes, time: float) -> None:
        if self.blocked:
            self._hold(data, time)
            return
        buf = self.cbuf + data if self.cbuf else data
        self.cbuf = b""
        pos = 0
        n = len(buf)
        while pos < n:
            mode = self.mode
            if self.blocked:
                self._hold(buf[pos:], time)
                return
            if mode == MESSAGE:
                pos = self._message_bytes(buf, pos, time)
                if self.mode == MESSAGE:  # a possible end-of-data line is incomplete: wait for more
                    break
                continue
            if mode == CHUNK:
                take = min(self.chunk_left, n - pos)
                self._content(buf[pos : pos + take])
                self.chunk_left -= take
                pos += take
                if not self.chunk_left:
                    self._chunk_done(time)
                continue
            if mode == ENCRYPTED:
                self.analyzer.hand_on(self.flow, self.client, buf[pos:], time)
                return
            if mode != COMMANDS:
                return
            if self.peek_tls:  # STARTTLS with no server seen: TLS follows if the client's next byte says so
                self.peek_tls = False
                if buf[pos] == 0x16:
                    self._start_tls(self.txn)
                    continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if n - pos > MAX_LINE:
                    if not self.skipping:
                        self._weird("line_too_long", time)
                    self.skipping = True
                    pos = n
                break
            line = buf[pos:end]
            pos = end + 1
            if self.skipping:
                self.skipping = False
                continue
            if len(line) > MAX_LINE:
                self._weird("line_too_long", time)
                continue
            self._command(line[:-1] if line.endswith(b"\r") else line, time)
        if self.mode in (COMMANDS, MESSAGE):
            self.cbuf = buf[pos:]

    def _hold(self, data: bytes, time: float) -> None:
        if not self.held:
            self.held_time = time
        self.held += data
        if len(self.held) > MAX_HELD:
            # The client does not wait for the reply it must wait for: act as if it came and was positive.
            self._weird("client_did_not_wait", time)
            self._assume_positive(time)

    def _assume_positive(self, time: float) -> None:
        if self.pending and self.pending[-1][0] in BLOCKING:
            verb, value, txn = self.pending.pop()
            if txn is not None:
                txn.pending -= 1
            self._effect(verb, value, txn, None, time)
        self._unblock(time)

    def _unblock(self, time: float) -> None:
        self.blocked = False
        if self.held:
            held, self.held = self.held, b""
            self._client(held, self.held_time)

    # ---------------------------------------------------------------- commands

    def _current(self, time: float) -> Transaction:
        txn = self.txn
        if txn is None:
            ts = self.start if not self.txn_count else time  # the first one describes the session's start
            self.txn_count += 1
            txn = self.txn = Transaction(ts, self.messages + 1, self.helo)
            self.txns.append(txn)
        return txn

    def _close_current(self, time: float) -> None:
        txn = self.txn
        if txn is not None:
            txn.closed = True
            self.txn = None
            self._emit_ready(time)

    def _command(self, line: bytes, time: float) -> None:
        if self.auth_expect or (self.auth is not None and not self.server_seen and self._auth_line(line)):
            self.auth_expect = False
            if self.auth is not None and len(self.auth["responses"]) < MAX_AUTH_RESPONSES:
                self.auth["responses"].append(line.decode("ascii", "replace"))
            self._queue("AUTH_DATA", None, None, time)
            return
        verb, arg = split_command(line)
        if verb == "MAIL" and self.txn is not None and self.txn.mail_seen:
            self._close_current(time)
        txn = self._current(time)
        txn.commands += 1
        if verb in ("HELO", "EHLO"):
            self.helo = txn.helo = arg
            self._queue(verb, None, txn, time)
        elif verb == "MAIL":
            txn.mail_seen = txn.activity = True
            self._queue(verb, path_address(arg, "FROM"), txn, time)
        elif verb == "RCPT":
            txn.activity = True
            self._queue(verb, path_address(arg, "TO"), txn, time)
        elif verb == "DATA":
            txn.activity = True
            self._queue(verb, None, txn, time)
        elif verb == "BDAT":
            self._bdat(arg, txn, time)
        elif verb in ("RSET", "QUIT"):
            self._queue(verb, None, txn, time)
            self._close_current(time)
        elif verb == "STARTTLS":
            txn.activity = True
            self._queue(verb, None, txn, time)
        elif verb == "AUTH":
            txn.activity = True
            mech, _, initial = arg.partition(" ")
            self.auth = {"mechanism": mech.upper(), "responses": [], "success": None}
            if initial.strip() and initial.strip() != "=":
                self.auth["responses"].append(initial.strip())
            self._queue(verb, None, txn, time)
        else:
            self._queue(verb, None, txn, time)

    def _auth_line(self, line: bytes) -> bool:
        """With no server seen, whether a line inside an AUTH exchange is a SASL response (not a verb)."""
        return split_command(line)[0] not in KNOWN_VERBS

    def _bdat(self, arg: str, txn: Transaction, time: float) -> None:
        parsed = bdat_args(arg)
        if parsed is None:
            # Without the chunk size the rest of the stream cannot be framed.
            self._weird("bad_bdat_command", time)
            self._break(time)
            return
        size, last = parsed
        txn.activity = True
        if txn.msg is None:
            txn.msg = MessageScanner()
            txn.msg_ts = time
        self._queue("BDAT", last, txn, time)
        self.chunk_left, self.chunk_last = size, last
        if size:
            self.mode = CHUNK
        else:
            self._chunk_done(time)

    def _chunk_done(self, time: float) -> None:
        self.mode = COMMANDS
        if self.chunk_last and self.txn is not None:
            self.messages += 1
            self._close_current(time)

    def _queue(self, verb: str, value: object, txn: Transaction | None, time: float) -> None:
        """Await the reply to a command; with no server seen, apply it as unanswered at once."""
        if not self.server_seen:
            self._effect(verb, value, txn, None, time)
            return
        if len(self.pending) >= MAX_PENDING:
            self._weird("too_many_pending_commands", time)
            old_verb, old_value, old_txn = self.pending.popleft()
            if old_txn is not None:
                old_txn.pending -= 1
            self._effect(old_verb, old_value, old_txn, None, time)
        self.pending.append((verb, value, txn))
        if txn is not None:
            txn.pending += 1
        if verb in BLOCKING:
            self.blocked = True

    # ---------------------------------------------------------------- message content

    def _message_bytes(self, buf: bytes, pos: int, time: float) -> int:
        """Un-dot-stuff message content from `pos`; return where parsing stopped."""
        n = len(buf)
        i = pos
        while i < n:
            if self.line_start:
                if buf[i] == 0x2E:  # "."
                    if i + 1 >= n:
                        return i
                    nxt = buf[i + 1]
                    if nxt == 0x0A or (nxt == 0x0D and i + 2 < n and buf[i + 2] == 0x0A):
                        self._end_of_data(time)
                        return i + (2 if nxt == 0x0A else 3)
                    if nxt == 0x0D and i + 2 >= n:
                        return i
                    i += 1  # dot-stuffing (RFC 5321 4.5.2): the first dot is not content
                self.line_start = False
            j = buf.find(b"\n.", i)
            if j < 0:
                self._content(buf[i:])
                self.line_start = buf[-1] == 0x0A
                return n
            self._content(buf[i : j + 1])
            i = j + 1
            self.line_start = True
        return n

    def _content(self, data: bytes) -> None:
        txn = self.txn
        if txn is not None and txn.msg is not None:
            txn.msg.feed(data)

    def _end_of_data(self, time: float) -> None:
        self.mode = COMMANDS
        self.messages += 1
        txn = self.txn
        self._queue(".", None, txn, time)
        self._close_current(time)

    # ---------------------------------------------------------------- replies

    def _reply(self, reply: Reply, time: float) -> None:
        if not self.pending:
            if reply.code != 421:
                self._weird("unmatched_reply", time)
            if self.txns:
                self.txns[-1].last_reply = reply.line()
            if reply.code == 421:
                self._server_closed(time)
            return
        verb, value, txn = self.pending.popleft()
        if txn is not None:
            txn.pending -= 1
            txn.last_reply = reply.line()
        elif self.txns:
            self.txns[-1].last_reply = reply.line()
        self._effect(verb, value, txn, reply.code, time)
        if reply.code == 421:
            self._server_closed(time)
        else:
            self._emit_ready(time)

    def _effect(
        self, verb: str, value: object, txn: Transaction | None, code: int | None, time: float
    ) -> None:
        """Apply a command's reply (`code` None: no reply seen, the command taken as sent)."""
        ok = code is None or 200 <= code < 300
        if verb == "MAIL" and txn is not None:
            if ok:
                txn.mailfrom = value  # type: ignore[assignment]
            else:
                txn.mailfrom_rejected = value  # type: ignore[assignment]
        elif verb == "RCPT" and txn is not None and isinstance(value, str):
            dest = txn.rcptto if ok else txn.rcptto_rejected
            if value not in dest:
                if len(dest) >= MAX_RCPT:
                    self._weird("smtp_too_many_rcptto_addresses", time)
                else:
                    dest.append(value)
        elif verb == "DATA":
            self._data_reply(txn, code, time)
        elif verb == "." and txn is not None and code is not None:
            txn.msg_accepted = ok
        elif verb == "BDAT" and txn is not None and code is not None:
            txn.msg_failed = txn.msg_failed or not ok
            if value:  # LAST
                txn.msg_accepted = ok and not txn.msg_failed
        elif verb == "STARTTLS":
            if code == 220:
                self._start_tls(txn)
                return
            if code is None:  # no reply seen: the client's next byte tells (0x16 starts a TLS record)
                self.peek_tls = True
            self._unblock(time)
        elif verb in ("AUTH", "AUTH_DATA"):
            self._auth_reply(code, time)

    def _data_reply(self, txn: Transaction | None, code: int | None, time: float) -> None:
        if txn is None:
            self._unblock(time)
            return
        if code is None or code == 354:
            self.mode = MESSAGE
            self.line_start = True
            if txn.msg is None:
                txn.msg = MessageScanner()
                txn.msg_ts = time
        else:
            txn.msg_accepted = False  # DATA refused: no message follows
        self._unblock(time)

    def _auth_reply(self, code: int | None, time: float) -> None:
        auth = self.auth
        if code == 334:
            self.auth_expect = True
        elif auth is not None and code is not None:
            auth["success"] = 200 <= code < 300
        self._unblock(time)

    def _start_tls(self, txn: Transaction | None) -> None:
        if txn is not None:
            txn.tls = True
            txn.activity = True
        self.mode = ENCRYPTED
        self.blocked = False
        if txn is not None and txn is self.txn:
            self._close_current(0.0)
        self._emit_ready(0.0)
        if self.held:
            held, self.held = self.held, b""
            self.analyzer.hand_on(self.flow, self.client, held, self.held_time)

    def _server_closed(self, time: float) -> None:
        """421 (RFC 5321 3.8): the server closes; commands still unanswered were not accepted."""
        self.mode = CLOSED
        self.blocked = False
        self.held = self.cbuf = b""
        while self.pending:
            verb, value, txn = self.pending.popleft()
            if txn is not None:
                txn.pending -= 1
            if verb in ("MAIL", "RCPT", ".", "BDAT", "DATA"):
                self._effect(verb, value, txn, 421, time)
        self._close_current(time)
        self._finish_all(time)

    # ---------------------------------------------------------------- records

    def _emit_ready(self, time: float) -> None:
        txns = self.txns
        while txns and txns[0].closed and txns[0].pending <= 0:
            self._emit(txns.popleft())

    def _finish_all(self, time: float) -> None:
        if self.txn is not None:
            self.txn.closed = True
            self.txn = None
        while self.txns:
            self._emit(self.txns.popleft())
        if not self.records and self.idle is not None:
            self._emit(self.idle, True)  # a session without a transaction still gets one record
        self.idle = None

    def _emit(self, txn: Transaction, force: bool = False) -> None:
        if not txn.activity and not force:
            if txn.commands and self.idle is None:
                self.idle = txn  # reported only if the session has no other record (see _finish_all)
            return
        self.records += 1
        client = self.client or 1
        rec = conn_fields(self.flow, client, txn.ts)
        rec["trans_depth"] = txn.trans_depth
        if txn.helo is not None:
            rec["helo"] = txn.helo
        if txn.mailfrom is not None:
            rec["mailfrom"] = txn.mailfrom
        if txn.mailfrom_rejected is not None:
            rec["mailfrom_rejected"] = txn.mailfrom_rejected
        if txn.rcptto:
            rec["rcptto"] = txn.rcptto
        if txn.rcptto_rejected:
            rec["rcptto_rejected"] = txn.rcptto_rejected
        path = [rec["id.resp_h"], rec["id.orig_h"]]
        is_webmail = False
        files: list[dict] = []
        if txn.msg is not None:
            txn.msg.finish()
            if txn.msg.headers is not None:
                fields, weirds = header_fields(txn.msg.headers, path)
                is_webmail = fields.pop("is_webmail")
                rec.update(fields)
                for name in weirds:
                    self._weird(name, txn.ts)
            for name in txn.msg.weirds:
                self._weird(name, txn.ts)
            files = self._files(txn, rec)
        if txn.last_reply is not None:
            rec["last_reply"] = txn.last_reply
        rec["path"] = path
        rec["tls"] = txn.tls
        rec["fuids"] = [f["fuid"] for f in files]
        rec["is_webmail"] = is_webmail
        if self.auth is not None:
            rec["auth_mechanism"] = self.auth["mechanism"]
            user = auth_user(self.auth["mechanism"], self.auth["responses"])
            if user is not None:
                rec["auth_user"] = user
            if self.auth["success"] is not None:
                rec["auth_success"] = self.auth["success"]
        if txn.msg is not None:
            rec["msg_size"] = txn.msg.size
            if txn.msg_accepted is not None:
                rec["msg_accepted"] = txn.msg_accepted
            attachments = [
                {k: f[k] for k in ("fuid", "filename", "mime_type", "seen_bytes") if k in f}
                for f in files
                if "filename" in f or f.get("disposition") == "attachment"
            ]
            for a in attachments:
                a["size"] = a.pop("seen_bytes")
            if attachments:
                rec["attachments"] = attachments
            if txn.msg.entities_dropped:
                rec["entities_not_listed"] = txn.msg.entities_dropped
        elif txn.msg_accepted is not None:
            rec["msg_accepted"] = txn.msg_accepted
        self.analyzer.records.append(rec)
        self.analyzer.records.extend(files)

    def _files(self, txn: Transaction, rec: dict) -> list[dict]:
        """One files.log record per leaf MIME entity of the transaction's message."""
        out = []
        assert txn.msg is not None
        for depth, ent in enumerate(txn.msg.entities, 1):
            f = conn_fields(self.flow, self.client or 1, txn.msg_ts)
            f["_log"] = "files"
            f["fuid"] = file_id(self.flow.uid, self.records, depth)
            f["source"] = "SMTP"
            f["depth"] = depth
            f["mime_type"] = ent.mime_type
            if ent.filename is not None:
                f["filename"] = ent.filename
            if ent.disposition is not None:
                f["disposition"] = ent.disposition
            f["encoding"] = ent.encoding
            f["is_orig"] = True
            f["seen_bytes"] = ent.size  # decoded, as Zeek's files.log counts
            f["encoded_bytes"] = ent.seen
            f.update(ent.digests())
            out.append(f)
        return out

    def _weird(self, name: str, time: float) -> None:
        """Count a protocol violation; the first of each name per flow also becomes a weird record."""
        self.analyzer.error(name)
        if name in self.weirds_seen:
            return
        self.weirds_seen.add(name)
        rec = conn_fields(self.flow, self.client or 1, time)
        rec["_log"] = "weird"
        rec["name"] = name
        rec["source"] = "SMTP"
        self.analyzer.records.append(rec)

    def _break(self, time: float) -> None:
        self.mode = BROKEN
        self.cbuf = self.held = b""
        self._finish_all(time)

    # ---------------------------------------------------------------- end

    def end(self, reason: str, time: float) -> None:
        """The flow ended: emit every transaction still open (unanswered commands taken as sent)."""
        if self.mode in (BROKEN, CLOSED):
            return
        if self.mode == ENCRYPTED:
            self._finish_all(time)
            return
        if self.blocked:
            self._assume_positive(time)
        if self.mode in (MESSAGE, CHUNK):
            self._weird("truncated_message", time)
            self.mode = COMMANDS
        while self.pending:
            verb, value, txn = self.pending.popleft()
            if txn is not None:
                txn.pending -= 1
            if verb in ("MAIL", "RCPT"):
                self._effect(verb, value, txn, None, time)
        self._finish_all(time)


class SmtpAnalyzer(FlowAnalyzer):
    """Analyzer factory for SMTP flows."""

    name = "smtp"
    # every parse-error reason this analyzer counts (tests/deploy/test_metrics_at_start.py checks the list)
    error_reasons = (
        "line_too_long",
        "client_did_not_wait",
        "bad_bdat_command",
        "too_many_pending_commands",
        "unmatched_reply",
        "smtp_too_many_rcptto_addresses",
        "smtp_too_many_to_addresses",
        "smtp_too_many_cc_addresses",
        "smtp_max_path_length_exceeded",
        "header_too_long",
        "part_header_too_long",
        "mime_too_deep",
        "too_many_mime_entities",
        "reply_line_too_long",
        "bad_reply_line",
        "truncated_message",
        "hand_on_not_drained",
    )

    def __init__(self) -> None:
        super().__init__()
        self.undrained = 0  # bytes handed on since the front end last drained `handed_on`

    def hand_on(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """Hand on TLS bytes after STARTTLS; bounded when no front end drains them (counted as dropped)."""
        if not self.handed_on:
            self.undrained = 0
        if self.undrained + len(data) > MAX_UNDRAINED:
            self.error("hand_on_not_drained")
            return
        self.undrained += len(data)
        super().hand_on(flow, sender, data, time)

    def stream(self, flow: FlowId, time: float) -> SmtpFlow:
        """Start parsing a new TCP flow."""
        return SmtpFlow(self, flow, time)
