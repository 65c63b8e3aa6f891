"""The long-running incubator: capture -> separate -> cell outputs (mirror, inline, DiCAP modes).

One thread does the data path; membership changes from the registry thread only raise a flag,
and the data path applies the new snapshot between batches.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from typing import Any

from celltap.incubator.capture.afpacket import AfPacketCapture, MiB, blocks_of
from celltap.incubator.capture.sources import CaptureUnavailable, PcapSource, netmap_available, parse_capture
from celltap.incubator.cellsource import RegistryCells, StaticCells
from celltap.incubator.config import Config, ConfigError
from celltap.incubator.engine import CellSpec, Engine
from celltap.incubator.flowtable import FlowTable
from celltap.incubator.fragments import FragmentTracker
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.outputs import SEND_ERROR_REASONS, IfaceOutput
from celltap.incubator.separator import Separator

from celltap.decode import DecodeOptions
from celltap.pcap.batch import FrameBatch

log = logging.getLogger("celltap.incubator")
RESOLVE_EVERY_S = 0.02  # XDP: how often held fragments look for their first fragment in the kernel
BATCH_BYTES = 8 << 20  # frame bytes taken from the capture ring per read (whole blocks)


def _open_afpacket(spec: str, cfg: Config, bpf: bytes | None = None) -> Any:
    kind, arg = parse_capture(spec)
    if kind == "xdp":  # the Python half of the XDP path, or its fallback: an AF_PACKET ring
        kind = "afpacket"
    if kind == "netmap":
        reason = netmap_available()
        if reason is not None:
            raise CaptureUnavailable(f"capture {spec}: {reason}")
        if bpf is not None:
            raise ConfigError("dicap mode needs afpacket: capture (netmap bypasses socket filters)")
        from celltap.incubator.capture.netmap import NetmapCapture

        return NetmapCapture(arg)
    if kind != "afpacket":
        raise ConfigError(f"capture {spec!r}: this mode needs a live interface (afpacket:IFACE)")
    b = cfg["batch"]
    return AfPacketCapture(
        arg,
        block_nr=blocks_of(max(2, b["ring_mb"]) * MiB),  # small blocks: see afpacket.BLOCK_SIZE
        retire_ms=b["timeout_ms"],
        fanout_group=cfg["fanout_group"],
        bpf=bpf,
        promiscuous=True,  # a mirror port's (and a bridge side's) frames are addressed to other hosts
    )


class Bridge:
    """Inline mode: frames from one side go out of the other, unchanged (batched sends)."""

    def __init__(self, ifname: str, metrics: IncubatorMetrics) -> None:
        self.sender = IfaceOutput(ifname)
        self.label = ifname
        self.metrics = metrics
        self.sent = 0
        self.dropped: dict[str, int] = {}
        metrics.bridged_frames.labels(ifname)  # both at 0 from the start
        for reason in SEND_ERROR_REASONS:
            metrics.bridge_dropped_frames.labels(ifname, reason)

    def forward(self, batch: FrameBatch) -> None:
        """Send every frame of the batch out of this side."""
        ok, _nbytes, drops = self.sender.send(batch)
        self.sent += ok
        if ok:
            self.metrics.bridged_frames.labels(self.label).inc(ok)
        for r, k in drops.items():
            self.dropped[r] = self.dropped.get(r, 0) + k
            self.metrics.bridge_dropped_frames.labels(self.label, r).inc(k)

    def close(self) -> None:
        """Close the sending socket."""
        self.sender.close()


def build_engine(cfg: Config, metrics: IncubatorMetrics) -> Engine:
    """Separator and engine from the config (no capture, no cells yet)."""
    fr, fl, dc = cfg["fragments"], cfg["flows"], cfg["dicap"]
    sep = Separator(
        seed=cfg["hash_seed"],
        pin_flows=True,
        nonip_policy=cfg["non_ip"],
        flow_table=FlowTable(fl["max_flows"], fl["idle_timeout_s"], fl["close_linger_s"]),
        fragments=FragmentTracker(fr["timeout_s"], fr["max_bytes"], fr["max_datagrams"]),
        partition=cfg["partition"],
        buckets_log2=dc["buckets_log2"],
        use_ports=dc["ports"],
        decode_options=DecodeOptions(decapsulate=cfg["decapsulate"]),
    )
    return Engine(sep, metrics)


def open_cells(cfg: Config, incubator_id: str) -> StaticCells | RegistryCells:
    """The cell source the config names."""
    reg = cfg["registry"]
    if reg is not None:
        rid = reg["id"] or incubator_id
        return RegistryCells(reg["url"], reg["cluster"], reg["output_key"], (rid, {"mode": cfg["mode"]}))
    return StaticCells(cfg["cells"])


class Incubator:
    """A configured incubator; `run()` until `stop` is set (SIGTERM sets it from the CLI)."""

    def __init__(
        self, cfg: Config, metrics: IncubatorMetrics | None = None, incubator_id: str = "incubator"
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or IncubatorMetrics()
        self.stop = threading.Event()
        self.engine = build_engine(cfg, self.metrics)
        self.cells = open_cells(cfg, incubator_id)
        self.mode = cfg["mode"]
        self.captures: list[tuple[str, Any, Bridge | None]] = []
        self.pcap: PcapSource | None = None
        self.dicap_cell: str | None = cfg["dicap"]["cell"] if self.mode == "dicap" else None
        self.xdp: Any = None  # XdpPath while the kernel separates
        self._open_captures()
        if parse_capture(cfg["capture"])[0] == "xdp":
            self._open_xdp()

    def _open_xdp(self) -> None:
        """Attach the XDP program after the AF_PACKET socket it passes frames to is open."""
        _kind, ifname = parse_capture(self.cfg["capture"])
        why = None
        peer = parse_capture(self.cfg["peer"])[1] if self.mode == "inline" else None
        if self.mode not in ("mirror", "inline"):
            why = f"mode {self.mode} is not served by the XDP path"
        else:
            try:
                from celltap.incubator.xdp.build import BuildError
                from celltap.incubator.xdp.datapath import XdpPath, XdpUnavailable, kernel_config
                from celltap.incubator.xdp.libbpf import BpfError

                try:
                    xdp = XdpPath(ifname, kernel_config(self.cfg), self.engine, self.metrics, peer=peer)
                    try:
                        xdp.check_cells(self.cells.current())
                    except XdpUnavailable:
                        xdp.close()
                        raise
                    self.xdp = xdp
                    self.engine.count_received = False
                    self.engine.after_set_cells = xdp.apply
                except (XdpUnavailable, BuildError, BpfError) as exc:
                    why = str(exc)
            except ImportError as exc:
                why = f"cannot load the XDP support: {exc}"
        if why is not None:
            log.warning(
                "xdp:%s: %s; the Python incubator separates instead (afpacket:%s)", ifname, why, ifname
            )

    def _drop_xdp(self, why: str) -> None:
        """Fall back to the Python path at run time (the AF_PACKET socket then sees every frame)."""
        xdp, self.xdp = self.xdp, None
        xdp.sync_metrics()
        xdp.close()
        self.engine.count_received = True
        self.engine.after_set_cells = None
        log.warning("xdp:%s: %s; the Python incubator separates from now on", xdp.ifname, why)

    def _dicap_filter(self, members: dict[str, CellSpec]) -> bytes:
        from celltap.incubator.dicap import cell_filter

        d = self.cfg["dicap"]
        weights = {cid: s.weight for cid, s in members.items()}
        return cell_filter(weights, d["cell"], self.cfg["hash_seed"], d["buckets_log2"], d["ports"])

    def _dicap_ebpf(self, ifname: str) -> Any:
        """DiCAP with the incubator's own partition: the eBPF socket filter, or one clear error."""
        try:
            from celltap.incubator.xdp.build import BuildError
            from celltap.incubator.xdp.datapath import XdpPath, XdpUnavailable, dicap_open, kernel_config
            from celltap.incubator.xdp.libbpf import BpfError

            try:
                path = XdpPath(ifname, kernel_config(self.cfg), self.engine, self.metrics, "dicap_filter")
            except (XdpUnavailable, BuildError, BpfError) as exc:
                raise CaptureUnavailable(
                    f"dicap mode: the eBPF socket filter cannot load ({exc}); "
                    "set partition: dicap to use the classic BPF filter"
                ) from exc
        except ImportError as exc:
            raise CaptureUnavailable(f"dicap mode: cannot load the eBPF support: {exc}") from exc
        own = self.cfg["dicap"]["output"]
        self.engine.open_fn = dicap_open(own or "")
        self.engine.count_received = False
        self.engine.after_set_cells = lambda: path.apply(self.dicap_cell)
        return path

    def _open_captures(self) -> None:
        cfg = self.cfg
        kind, arg = parse_capture(cfg["capture"])
        if kind == "pcap":
            if self.mode != "mirror":
                raise ConfigError("config key 'capture': pcap input works in mirror mode only")
            self.pcap = PcapSource(arg)
            return
        if self.mode == "inline":
            a = _open_afpacket(cfg["capture"], cfg)
            b = _open_afpacket(cfg["peer"], cfg)
            _, a_if = parse_capture(cfg["capture"])
            _, b_if = parse_capture(cfg["peer"])
            self.captures = [(a_if, a, Bridge(b_if, self.metrics)), (b_if, b, Bridge(a_if, self.metrics))]
        elif self.mode == "dicap" and cfg["partition"] == "xxh64":
            self.xdp = self._dicap_ebpf(arg)
            try:
                self.captures = [(arg, _open_afpacket(cfg["capture"], cfg, self.xdp.prog_fd()), None)]
            except BaseException:
                self.xdp.close()
                raise
        elif self.mode == "dicap":
            self.captures = [(arg, _open_afpacket(cfg["capture"], cfg, self._dicap_filter({})), None)]
        else:
            self.captures = [(arg, _open_afpacket(cfg["capture"], cfg), None)]

    def _apply_cells(self) -> None:
        cells = self.cells.current()
        if self.mode == "dicap" and self.xdp is not None:
            from celltap.incubator.xdp.datapath import OTHER_CELL_SPEC

            own = self.dicap_cell
            out = self.cfg["dicap"]["output"] or (cells[own].output if own in cells else None)
            self.engine.set_cells(
                {
                    cid: CellSpec(cid, out if cid == own and out else OTHER_CELL_SPEC, s.weight)
                    for cid, s in cells.items()
                }
            )
        elif self.mode == "dicap":
            cap = self.captures[0][1]
            cap.attach_filter(self._dicap_filter(cells))
            own = self.dicap_cell
            out = self.cfg["dicap"]["output"] or (cells[own].output if own in cells else None)
            self.engine.set_cells({own: CellSpec(own, out)} if own and out else {})
        else:
            if self.xdp is not None:
                from celltap.incubator.xdp.datapath import XdpUnavailable

                try:
                    self.xdp.check_cells(cells)
                except XdpUnavailable as exc:
                    self._drop_xdp(str(exc))
            self.engine.set_cells(cells)  # XDP: programs the kernel too (engine.after_set_cells)

    def run(self) -> int:
        """The data path loop."""
        timeout = self.cfg["batch"]["timeout_ms"]
        max_blocks = blocks_of(BATCH_BYTES)
        max_frames = self.cfg["batch"]["frames"]
        self._apply_cells()
        poller = select.poll()
        for _name, cap, _br in self.captures:
            poller.register(cap.fileno(), select.POLLIN | select.POLLERR)
        last_stats = last_resolve = time.monotonic()
        try:
            while not self.stop.is_set():
                if self.cells.changed.is_set():
                    self._apply_cells()
                if self.pcap is not None:
                    batch = self.pcap.next_batch()
                    if batch is None:
                        break
                    self.engine.process(batch, self.pcap.name)
                    continue
                idle = True
                for name, cap, bridge in self.captures:
                    batch = cap.read_batch(max_blocks, max_frames)
                    if batch is None:
                        continue
                    idle = False
                    try:
                        if bridge is not None:
                            bridge.forward(batch)
                        self.engine.process(batch, name)
                    finally:
                        cap.release()
                if self.xdp is not None and self.engine.sep.frags.waiting:
                    now = time.monotonic()
                    if now - last_resolve >= RESOLVE_EVERY_S:  # one map lookup per held datagram
                        self.xdp.resolve_fragments()
                        last_resolve = now
                if idle:
                    poller.poll(timeout)
                now = time.monotonic()
                if now - last_stats > 1.0:
                    self._kernel_stats()
                    last_stats = now
        finally:
            self._kernel_stats()
            if self.xdp is not None:
                self.xdp.resolve_fragments()
                self.xdp.close()
                self.xdp = None
            self.engine.finish()
            for _name, cap, bridge in self.captures:
                cap.close()
                if bridge is not None:
                    bridge.close()
            if self.pcap is not None:
                self.pcap.close()
            self.cells.close()
        return 0

    def _kernel_stats(self) -> None:
        if self.xdp is not None:
            self.xdp.sync_metrics()
        for name, cap, _br in self.captures:
            st = cap.stats()
            if st.drops:
                # Never received by us, so outside the conservation identity; counted on their own.
                self.metrics.dropped_frames.labels("capture_ring_full").inc(st.drops)
                log.warning("%s: kernel dropped %d frames (ring full)", name, st.drops)


def run_live(cfg: Config) -> int:
    """Run from a config until SIGTERM / SIGINT; serves metrics if configured."""
    if cfg["metrics_port"] is not None:
        from celltap.user_errors import serve_metrics

        serve_metrics(cfg["metrics_port"], cfg["metrics_addr"])
    try:
        inc = Incubator(cfg)
    except CaptureUnavailable as exc:
        log.error("%s", exc)
        print(f"celltap incubator: {exc}")
        return 1
    except OSError as exc:  # name what failed (the capture interface, a file), not just the errno
        from celltap.user_errors import explain

        raise ConfigError(f"cannot start: {explain(exc, exc.filename or cfg['capture'])}") from None
    except ValueError as exc:
        raise ConfigError(f"cannot start: {exc}") from exc

    def _stop(_sig: int, _frame: object) -> None:
        inc.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    rc = inc.run()
    e = inc.engine
    received, accounted = e.conservation()
    log.warning(
        "incubator done: received %d forwarded %d dropped %s (conservation %s)",
        received,
        e.forwarded,
        e.dropped,
        "ok" if received == accounted else "BROKEN",
    )
    return rc
