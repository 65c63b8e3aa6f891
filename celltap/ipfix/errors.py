"""Errors raised by the sans-IO IPFIX / NetFlow parsers."""


class MalformedError(ValueError):
    """Input that violates RFC 7011 / NetFlow framing; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
