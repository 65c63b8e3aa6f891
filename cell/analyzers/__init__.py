"""Application analyzers reading a cell interface: HTTP, DNS, TLS, SMTP, SIP (JSON lines out)."""
