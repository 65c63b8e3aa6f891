"""The store's retrieval endpoint: HTTP, bearer-token authenticated, one pcap per query.

`GET /pcap?uid=C...|flow=tcp+a:p+b:p[&from=NS&to=NS]` with `Authorization: Bearer TOKEN` (when the
store has a token) over HTTP or HTTPS (`store.tls`; with a `ca`, a client certificate it signed is
required: mutual TLS, 403 without) answers a
nanosecond pcap of the flow's frames in this cell's store (an empty capture when there are none;
`X-Celltap-Frames` says how many). A wrong or missing token is 401, a bad query 400 with one line,
anything else 404. The token is compared in constant time. The server runs in daemon threads of the
cell process and only reads the store directory, so the cell's data path never waits for a query.
"""

from __future__ import annotations

import hmac
import io
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from celltap.cell.store.query import NS_MAX, Query, QueryError, parse_flow, query_dir

from celltap.pcap.batch import LINKTYPE_ETHERNET
from celltap.pcap.writer import PcapWriter
from celltap.registry.tls import TLSConfig

log = logging.getLogger("celltap.cell.store")


def read_token(path: str) -> str:
    """The bearer token in a file (surrounding whitespace ignored); ValueError when empty."""
    with open(path) as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError(f"store token file {path} is empty")
    return token


def query_from_params(params: dict[str, list[str]]) -> Query:
    """A Query from URL parameters uid | flow, from, to (nanoseconds)."""
    q = Query()
    if "uid" in params:
        q.uid = params["uid"][0]
    elif "flow" in params:
        q.key = parse_flow(params["flow"][0])
    else:
        raise QueryError("name a flow: uid=... or flow=...")
    try:
        q.t_from = int(params.get("from", ["0"])[0])
        q.t_to = int(params.get("to", [str(NS_MAX)])[0])
    except ValueError:
        raise QueryError("from / to: expected integer nanoseconds") from None
    return q


def pcap_bytes(batch: object, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """A nanosecond pcap holding `batch` (or no frames when it is None)."""
    out = io.BytesIO()
    w = PcapWriter(out, batch.linktype if batch is not None else linktype, nanosecond=True)  # type: ignore[attr-defined]
    if batch is not None:
        w.write_batch(batch)  # type: ignore[arg-type]
    w.flush()
    return out.getvalue()


class StoreServer:
    """Serves one store directory on HOST:PORT until close()."""

    def __init__(
        self,
        listen: str,
        directory: str,
        token: str | None,
        open_index: Callable | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.directory = directory
        self.tls = tls
        self.open_index = open_index  # the writer's index of its open file (no walk of that file)
        self.token = token.encode() if token else None
        self.queries: dict[str, int] = {"ok": 0, "bad_request": 0, "unauthorized": 0, "error": 0}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # seconds a client may take per read: an idle connection does not keep a thread

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("store endpoint: " + fmt, *args)

            def do_GET(self) -> None:
                outer._get(self)

        address = (host.strip("[]") or "0.0.0.0", int(port))
        if tls is not None:
            # HTTPS as the nodes' query API serves it: the handshake in the request's thread, bounded
            from celltap.collector.query_auth import TLSHTTPServer, server_context

            self.httpd: ThreadingHTTPServer = TLSHTTPServer(address, Handler, server_context(tls))
        else:
            self.httpd = ThreadingHTTPServer(address, Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="celltap-store-http", daemon=True
        )
        self.thread.start()

    def _reply(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain",
               headers: dict[str, str] | None = None) -> None:  # fmt: skip
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        if self.tls is not None and self.tls.ca and not h.connection.getpeercert():  # type: ignore[attr-defined]
            self.queries["unauthorized"] += 1
            self._reply(h, 403, b"a client certificate signed by the store's CA is required\n")
            return
        auth = h.headers.get("Authorization", "")
        given = auth[7:].encode() if auth.startswith("Bearer ") else b""
        if self.token is not None and not hmac.compare_digest(given, self.token):
            self.queries["unauthorized"] += 1
            self._reply(h, 401, b"missing or wrong bearer token\n")
            return
        url = urlsplit(h.path)
        if url.path != "/pcap":
            self._reply(h, 404, b"not found: GET /pcap?uid=...|flow=...\n")
            return
        try:
            q = query_from_params(parse_qs(url.query))
            live = self.open_index() if self.open_index is not None else None
            batch = query_dir(self.directory, q, live)
            body = pcap_bytes(batch)
        except QueryError as exc:
            self.queries["bad_request"] += 1
            self._reply(h, 400, f"{exc}\n".encode())
            return
        except Exception as exc:
            self.queries["error"] += 1
            log.exception("store query failed")
            self._reply(h, 500, f"store query failed: {exc}\n".encode())
            return
        self.queries["ok"] += 1
        frames = 0 if batch is None else len(batch)
        self._reply(h, 200, body, "application/vnd.tcpdump.pcap", {"X-Celltap-Frames": str(frames)})

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
