"""SIP-over-UDP analyzer: one record per message, and one per call (INVITE .. 2xx .. BYE .. 2xx) with
setup delay and duration, as in Scalanytics' SIP pipeline."""

from __future__ import annotations

from collections import OrderedDict

from cell.analyzers.endpoints import endpoint
from cell.sdk.events import FlowId
from cell.sdk.flows import FlowAnalyzer

MAX_CALLS = 100_000
MAX_MESSAGE = 65535

# RFC 3261 compact header forms
_COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "m": "contact",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}


class SipError(ValueError):
    """A malformed message; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _uri(value: str) -> str:
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        return value[start + 1 : end if end >= 0 else None]
    return value.split(";", 1)[0].strip()


def _tag(value: str) -> str | None:
    close = value.rfind(">")
    for param in value[close + 1 :].split(";")[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "tag":
            return val.strip()
    return None


def parse_sip(data: bytes) -> dict:
    """Parse a SIP message's start line and the headers we report."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    lines = head.decode("utf-8", "replace").split("\r\n")
    start = lines[0].split(" ", 2)
    msg: dict = {}
    if start[0].startswith("SIP/"):
        if len(start) < 2 or not start[1].isdigit():
            raise SipError("bad_status_line")
        msg["status"] = {"code": int(start[1]), "reason": start[2] if len(start) > 2 else ""}
    else:
        if len(start) != 3 or not start[2].startswith("SIP/") or not start[0].isalpha():
            raise SipError("bad_request_line")
        msg["request"] = {"method": start[0], "uri": start[1]}
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise SipError("bad_header_line")
        name = name.strip().lower()
        name = _COMPACT.get(name, name)
        if name not in headers:
            headers[name] = value.strip()
    if "call-id" not in headers or "cseq" not in headers:
        raise SipError("missing_call_id_or_cseq")
    seq, _, method = headers["cseq"].partition(" ")
    if not seq.isdigit():
        raise SipError("bad_cseq")
    frm = headers.get("from", "")
    to = headers.get("to", "")
    msg.update(
        {
            "call_id": headers["call-id"],
            "from": _uri(frm),
            "from_tag": _tag(frm),
            "to": _uri(to),
            "to_tag": _tag(to),
            "cseq": {"seq": int(seq), "method": method.strip()},
        }
    )
    return msg


class SipAnalyzer(FlowAnalyzer):
    """SIP messages over UDP, with call tracking by Call-ID (bounded; evictions are counted)."""

    name = "sip"

    def __init__(self) -> None:
        super().__init__()
        self.calls: OrderedDict[str, dict] = OrderedDict()

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """One UDP datagram is one SIP message (keep-alive CRLFs are skipped)."""
        if not data.strip():
            return
        src, dst = endpoint(flow, sender), endpoint(flow, 3 - sender)
        try:
            if len(data) > MAX_MESSAGE:
                raise SipError("message_too_long")
            msg = parse_sip(data)
        except SipError as exc:
            self.error(exc.reason)
            self.records.append({"type": "error", "error": exc.reason, "time": time, "src": src, "dst": dst})
            return
        record = {"type": "message", "time": time, "src": src, "dst": dst}
        record.update(msg)
        self.records.append(record)
        self._track(msg, src, dst, time)

    def _track(self, msg: dict, src: dict, dst: dict, time: float) -> None:
        call_id = msg["call_id"]
        cseq_method = msg["cseq"]["method"]
        call = self.calls.get(call_id)
        if "request" in msg:
            method = msg["request"]["method"]
            if method == "INVITE" and call is None:
                if len(self.calls) >= MAX_CALLS:
                    _, old = self.calls.popitem(last=False)
                    self.error("call_table_full")
                    self._finish(old, "evicted")
                self.calls[call_id] = {
                    "type": "call",
                    "call_id": call_id,
                    "from": msg["from"],
                    "to": msg["to"],
                    "caller": src,
                    "callee": dst,
                    "invite_time": time,
                    "answer_time": None,
                    "end_time": None,
                }
            elif call is not None and method == "BYE":
                call["bye_time"] = time
            elif call is not None and method == "CANCEL":
                call["cancelled"] = True
            return
        if call is None:
            return
        code = msg["status"]["code"]
        if code < 200:
            return
        if cseq_method == "INVITE":
            if 200 <= code < 300:
                if call["answer_time"] is None:
                    call["answer_time"] = time
            else:
                call["final_code"] = code
                self._finish(call, "cancelled" if call.get("cancelled") else "failed")
                del self.calls[call_id]
        elif cseq_method == "BYE":
            call["end_time"] = time
            self._finish(call, "completed")
            del self.calls[call_id]

    def _finish(self, call: dict, state: str) -> None:
        call["state"] = state
        answer = call["answer_time"]
        call["setup_delay"] = None if answer is None else round(answer - call["invite_time"], 6)
        end = call["end_time"] or call.get("bye_time")
        call["duration"] = None if answer is None or end is None else round(end - answer, 6)
        self.records.append(call)

    def close(self, time: float) -> None:
        """End of input: report calls still open."""
        for call in self.calls.values():
            self._finish(call, "incomplete")
        self.calls.clear()
