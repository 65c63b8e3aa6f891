"""A running cell: the abstractor core wired to inputs, interface sockets, L7 loopback, IPFIX export."""

from __future__ import annotations

import gc
import json
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from celltap.cell.abstractor import Abstractor
from celltap.cell.flow_export import FlowExporter
from celltap.cell.inputs import (
    GeneveSource,
    InterfaceSource,
    LiveSource,
    PcapStreamParser,
    VxlanSource,
    pcap_batches,
)
from celltap.cell.interfaces import InterfaceServer
from celltap.cell.loopback_input import LoopbackParser
from celltap.cell.memory_budget import HEADROOM, plan
from celltap.cell.sftap_config import CellConfig
from celltap.cell.store.serve import StoreServer, read_token
from celltap.cell.store.writer import PacketStore

from celltap.pcap.batch import FrameBatch

log = logging.getLogger("celltap.cell")
# How often the live inputs' kernel drop counters are read (a scan of /proc/net/udp for a tunnel).
KERNEL_DROPS_EVERY_S = 1.0


def _vm_hwm() -> str:
    """This process's peak resident set (VmHWM of /proc/self/status), e.g. '123456 kB'."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class Cell:
    """One flow abstractor process's state; `run_offline` / `run_live` drive it."""

    def __init__(
        self,
        cfg: CellConfig,
        cell_id: int = 0,
        ipfix: str | None = None,
        reader_buffer: int | None = None,
        inputs: int = 1,
    ) -> None:
        self.cfg = cfg
        self.cell_id = cell_id
        # Flows, events and batches make no reference cycles worth hunting per allocation burst: the
        # default thresholds would rescan millions of live flows again and again.
        gc.freeze()
        gc.set_threshold(200_000, 50, 1000)
        if reader_buffer:
            cfg.glob.reader_buffer = reader_buffer  # --reader-buffer: counted in the budget like the key
        self.budget = plan(cfg, inputs)  # the live inputs it will read (their buffers are planned)
        if cfg.glob.max_flows is None:
            cfg.glob.max_flows = self.budget.max_flows
        log.info("%s", self.budget.describe())
        if self.budget.total > self.budget.usable:
            log.warning(
                "the configured caps can take %d MiB, more than memory_budget %d MiB less %.0f%% headroom: "
                "raise global.memory_budget to the pod's limit, or lower the caps",
                self.budget.total >> 20,
                cfg.glob.memory_budget >> 20,
                HEADROOM * 100,
            )
        self.abstractor = Abstractor(cfg)
        self.stop = False
        self.loopback_events = 0
        lb = cfg.special.get("loopback7")
        pc = cfg.special.get("pcap")
        self.loopback_format = lb.fmt if lb else "text"
        self.server = InterfaceServer(
            cfg.glob.home,
            list(self.abstractor.sinks),
            cfg.glob.reader_buffer,
            loopback=lb.ifname if lb else None,
            on_loopback=self._on_loopback,
            pcap=pc.ifname if pc else None,
            on_pcap=self._on_pcap,
            on_input_close=self._on_input_close,
            socket_group=cfg.glob.socket_group,
        )
        self.exporter = FlowExporter(ipfix, cell_id) if ipfix else None
        self.store: PacketStore | None = None
        self.store_server: StoreServer | None = None
        if cfg.store is not None:
            self._open_store(cell_id)
        self.sources: list[LiveSource] = []
        self._lb_state: dict[socket.socket, LoopbackParser] = {}
        self._lb_open: dict[socket.socket, dict[tuple, bool]] = {}  # streams each writer left open
        self._pcap_state: dict[socket.socket, PcapStreamParser] = {}
        self._clock_pkt = 0  # no packet yet: nothing can time out
        self._clock_wall = time.time_ns()

    # ------------------------------------------------------------------ plumbing
    def input_drops(self) -> dict[str, int]:
        """Frames dropped by the live inputs, by reason."""
        out: dict[str, int] = {}
        for s in self.sources:
            for k, v in s.drops.items():
                out[k] = out.get(k, 0) + v
        return out

    def flush(self) -> None:
        """Hand the produced events to the readers and the ended flows to the exporter."""
        a = self.abstractor
        for sink in a.sinks.values():
            if sink.parts:
                parts, events = sink.take()
                self.server.deliver(sink.name, parts, events)
        ended = a.take_ended()
        if ended and self.store is not None:
            self.store.note_ended(ended)
        if ended and self.exporter is not None:
            self.exporter.export(ended, time.time())

    def process(self, batch: FrameBatch, now_ns: int | None = None) -> None:
        """One batch of frames through the core, then out to the readers."""
        self.abstractor.process_frames(batch, now_ns)  # the store, if any, gets each decoded batch
        self._clock_pkt = self.abstractor.now_ns
        self._clock_wall = time.time_ns()
        self.flush()

    def clock(self) -> int:
        """Flow-table time: the newest packet time plus the wall time since it (injected pcaps keep
        their own timestamps, yet idle flows still time out while nothing arrives)."""
        if not self._clock_pkt:
            return time.time_ns()
        return self._clock_pkt + (time.time_ns() - self._clock_wall)

    def expand_waits(self, names: list[str]) -> list[str]:
        """Interface names to wait for: `tcp/http` also names the balanced sockets tcp/http0..N-1."""
        out: list[str] = []
        sinks = self.abstractor.sinks
        for name in names:
            if name in sinks:
                out.append(name)
                continue
            balanced = [s for s in sinks if s.startswith(name) and s[len(name) :].isdigit()]
            if not balanced:
                raise ValueError(f"--wait-readers: no interface {name!r} (have: {', '.join(sorted(sinks))})")
            out += balanced
        return out

    def wait_readers(self, names: list[str], timeout: float) -> bool:
        """Serve sockets until every named interface has a reader; False on timeout or stop."""
        deadline = time.monotonic() + timeout
        while not self.stop:
            missing = [n for n in names if self.server.connected(n) == 0]
            if not missing:
                return True
            if time.monotonic() > deadline:
                log.error("readers did not connect within %.0fs: %s", timeout, ", ".join(missing))
                return False
            self.server.poll(0.05)
        return False

    # ------------------------------------------------------------------ drivers
    def run_offline(self, path: str, stall_timeout: float, drain_timeout: float) -> None:
        """Read a capture to its end, end every flow, flush everything."""
        self.server.pace = True
        self.server.stall_timeout = stall_timeout
        if self.store is not None:
            self.store.block = True  # offline: complete and repeatable, as for the readers
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            for batch in pcap_batches(path):
                if self.stop:
                    break
                self.process(batch)
                self.server.poll(0)
        finally:
            # a corrupt capture still ends (and exports) the flows read before the damage
            self.abstractor.finish()
            self.flush()
            self.server.drain(drain_timeout)
        a = self.abstractor
        log.info(
            "offline run: %d packets, %d flows in %.3f s (cpu %.3f s)",
            a.packets,
            sum(a.flows_created.values()),
            time.perf_counter() - t0,
            time.process_time() - c0,
        )
        log.info("offline run drops: %s", json.dumps(self.drop_summary(), sort_keys=True))
        log.info("offline run peak RSS: %s", _vm_hwm())

    def drop_summary(self) -> dict[str, dict[str, int]]:
        """What was dropped, skipped or cut short, by stage and reason (the drop metrics' values)."""
        a = self.abstractor
        out = {
            "packets": a.drops,
            "defrag": a.defrag.drops,
            "loopback": a.loopback_drops,
            "tcp_cap_skips": a.tcp_stats.cap_skips,
            "classified_early": a.classified_early,
            "input": self.input_drops(),
        }
        return {k: {r: n for r, n in v.items() if n} for k, v in out.items()}

    def add_input(self, spec: str) -> None:
        """Open a live input: `vxlan://ADDR:PORT[?vni=N]`, `geneve://ADDR:PORT[?vni=N]` or `iface:IFACE`."""
        src: LiveSource
        if spec.startswith(("vxlan://", "geneve://")):
            base, _, query = spec.partition("?")
            q = parse_qs(query)
            unknown = set(q) - {"vni"}
            if unknown:
                raise ValueError(f"--input {spec!r}: unknown parameter {sorted(unknown)[0]!r}")
            vni = int(q["vni"][0]) if "vni" in q else None
            src = VxlanSource(base, vni) if spec.startswith("vxlan://") else GeneveSource(base, vni)
        elif spec.startswith("iface:"):
            src = InterfaceSource(spec[len("iface:") :])
        else:
            raise ValueError(
                f"--input: expected vxlan://ADDR:PORT, geneve://ADDR:PORT or iface:IFACE, got {spec!r}"
            )
        self.sources.append(src)
        self.server.sel.register(src.sock, 1, ("cb", lambda s=src: self._source_ready(s)))

    def input_stamps(self) -> dict[str, int]:
        """Live frames by where their time came from: `sender` (carried), `receive` (kernel receive), or
        `future` (a carried time more than a minute past the receive time: the receive time is used)."""
        out = {"sender": 0, "receive": 0, "future": 0}
        for s in self.sources:
            for k, v in s.stamps.items():
                out[k] += v
        return out

    def _source_ready(self, src: LiveSource) -> None:
        batch = src.read_batch()
        if batch is not None:
            self.process(batch, time.time_ns())

    def run_live(self, tick: float = 0.1, until: Callable[[], bool] | None = None) -> None:
        """Serve inputs and sockets until stopped; idle flows time out by the wall clock."""
        last_gc = last_kernel = 0.0
        while not self.stop and not (until and until()):
            self.server.poll(tick)
            now = time.monotonic()
            if now - last_gc >= tick and self._clock_pkt:
                last_gc = now
                self.abstractor.collect(self.clock())
                self.flush()
            if now - last_kernel >= KERNEL_DROPS_EVERY_S:
                last_kernel = now
                self.count_kernel_drops()

    def count_kernel_drops(self) -> None:
        """Add what the kernel dropped at each live input (full ring or receive buffer) to its drops."""
        for s in self.sources:
            s.count_kernel_drops()

    def log_live_drops(self) -> None:
        """At the end of a live run: what was dropped, and a warning naming what the inputs lost."""
        self.count_kernel_drops()
        lost = self.input_drops()
        if lost:
            log.warning("live inputs dropped frames: %s", json.dumps(lost, sort_keys=True))
        log.info("live run drops: %s", json.dumps(self.drop_summary(), sort_keys=True))

    def close(self) -> None:
        """Close inputs, sockets and the exporter."""
        for s in self.sources:
            s.close()
        self.server.close()
        if self.exporter is not None:
            self.exporter.close()
        if self.store_server is not None:
            self.store_server.close()
        if self.store is not None:
            self.store.close()

    def _open_store(self, cell_id: int) -> None:
        """The packet store (cell/store): its writer thread and, with `listen`, its HTTP endpoint."""
        sc = self.cfg.store
        assert sc is not None
        token = read_token(sc.token_file) if sc.listen and sc.token_file else None
        self.store = PacketStore(sc, cell_id)
        self.abstractor.on_decoded = self.store.submit
        if sc.listen:
            try:
                self.store_server = StoreServer(sc.listen, sc.dir, token, self.store.open_index, sc.tls)
            except OSError:
                self.store.close()
                raise

    # ------------------------------------------------------------------ L7 loopback and pcap injection
    def _on_loopback(self, sock: socket.socket, data: bytes) -> None:
        parser = self._lb_state.get(sock)
        if parser is None:
            parser = LoopbackParser(self.loopback_format, self.cfg.glob.loopback_max_len)
            self._lb_state[sock] = parser
            self._lb_open[sock] = {}
        open_flows = self._lb_open[sock]
        events = parser.feed(data)
        a = self.abstractor
        if parser.drops:
            # bad events cost only themselves: counted by reason, the connection goes on
            for reason, n in parser.drops.items():
                a.count_loopback_drop(reason, n)
            parser.drops.clear()
        for e in events:
            ident = (e.l3, e.l4, e.a1, e.p1, e.a2, e.p2, e.hop)
            self.loopback_events += 1
            # the writer's own time: CREATED carries the connection's start, so the stream keeps its uid
            ts = e.time_ns or self.clock()
            if a.inject(e.event, e.l3, e.l4, e.a1, e.p1, e.a2, e.p2, e.hop, e.sender or 1, e.data, ts):
                if e.event == "DESTROYED":
                    open_flows.pop(ident, None)
                else:
                    open_flows[ident] = True
        self.flush()

    def _on_pcap(self, sock: socket.socket, data: bytes) -> None:
        parser = self._pcap_state.setdefault(sock, PcapStreamParser())
        batch = parser.feed(data)
        if parser.failed:
            self.abstractor.count_drop("pcap_socket_bad_stream")
        if batch is not None:
            self.process(batch)

    def _on_input_close(self, sock: socket.socket) -> None:
        self._lb_state.pop(sock, None)
        open_flows = self._lb_open.pop(sock, None)
        if open_flows is not None:
            # as SF-TAP: streams a loopback writer leaves open end when it disconnects
            for ident in list(open_flows):
                l3, l4, a1, p1, a2, p2, hop = ident
                self.abstractor.inject(
                    "DESTROYED", l3, l4, a1, p1, a2, p2, hop, 0, b"", self.abstractor.now_ns
                )
            self.flush()
        self._pcap_state.pop(sock, None)
