"""The running collector: UDP worker processes, a TCP server, metrics, and the batch hook."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable

from celltap.collector.allowlist import AllowList
from celltap.collector.config import CollectorConfig, ListenAddress
from celltap.collector.ingest import IngestConfig, Ingestor
from celltap.collector.malloc_tuning import keep_batches_on_heap
from celltap.collector.metrics import CollectorMetrics
from celltap.collector.seq_state import SequenceState
from celltap.collector.stats import IngestStats
from celltap.collector.tcp_server import TcpServer
from celltap.collector.template_store import (
    InMemoryTemplateStore,
    KVTemplateStore,
    SnapshotTemplateStore,
    TemplateStore,
    WriteBehindStore,
)
from celltap.collector.udp_server import UdpWorker, open_udp_socket

from celltap.ipfix.records import RecordBatch
from celltap.user_errors import serve_metrics

log = logging.getLogger("celltap.collector")

Sink = Callable[[list[RecordBatch]], None]
# Called once inside each worker (process or thread) with the worker's index (-1 for TCP); returns
# the callable that receives that worker's decoded RecordBatches.
HookFactory = Callable[[int], Sink]


def discard(batches: list[RecordBatch]) -> None:
    """The sink when nothing is configured to take records (they are still counted as decoded)."""


def make_store(config: CollectorConfig, local_dir: str | None = None, worker: int = 0) -> TemplateStore:
    """The template store: the cluster registry when configured, else snapshot files in a directory the
    workers of this host share (`local_dir`), else this process's memory.  Writes are asynchronous."""
    if config.registry:
        from celltap.registry import open_registry  # imported here: workers open their own connection

        try:
            return WriteBehindStore(KVTemplateStore(open_registry(config.registry), config.cluster))
        except Exception as exc:  # a registry that cannot be reached must not stop decoding
            log.error(
                "template store %s unavailable (%s): templates stay in this process", config.registry, exc
            )
            return InMemoryTemplateStore()
    if local_dir:
        try:
            return WriteBehindStore(SnapshotTemplateStore(local_dir, worker))
        except OSError as exc:
            log.error("template directory %s unusable (%s): templates stay in this process", local_dir, exc)
    return InMemoryTemplateStore()


def ingest_config(config: CollectorConfig) -> IngestConfig:
    """The ingestion core's limits from the collector config."""
    return IngestConfig(
        template_expiry=config.template_expiry,
        max_templates_per_domain=config.max_templates_per_domain,
        max_domains=config.max_domains,
        max_state_bytes=config.max_state_bytes,
        max_exporter_bytes=config.max_exporter_bytes,
        max_domains_per_exporter=config.max_domains_per_exporter,
        domain_expiry=config.domain_expiry,
    )


def make_ingestor(
    config: CollectorConfig,
    store: TemplateStore | None = None,
    local_dir: str | None = None,
    worker: int | None = None,
) -> Ingestor:
    """An Ingestor with the config's limits, allow-list and template store; a UDP worker (`worker` set)
    with a `state_dir` also keeps its sequence state there across restarts."""
    seq = None
    if worker is not None and config.state_dir:
        seq = SequenceState(config.state_dir, worker, config.max_domains, config.domain_expiry)
        try:
            seq.load()
        except OSError as exc:  # checked at start (check_state_dir); if it went bad since, go on without
            log.error("state_dir %s unusable (%s): sequence state is not kept", config.state_dir, exc)
            seq = None
    return Ingestor(
        ingest_config(config),
        store if store is not None else make_store(config, local_dir, max(worker or 0, 0)),
        IngestStats(),
        AllowList(config.allow),
        seq_state=seq,
    )


def check_state_dir(config: CollectorConfig) -> None:
    """Create state_dir if needed and check that it is writable (OSError naming it otherwise)."""
    if not config.state_dir:
        return
    os.makedirs(os.path.join(config.state_dir, "templates"), exist_ok=True)
    probe = os.path.join(config.state_dir, f".probe-{os.getpid()}")
    with open(probe, "wb") as fh:
        fh.write(b"ok")
    os.unlink(probe)


def _template_dir(config: CollectorConfig, local_dir: str | None) -> str | None:
    if config.state_dir:
        return os.path.join(config.state_dir, "templates")
    return local_dir


def remove_stale_run_dirs(base: str | None = None) -> int:
    """Remove per-run template directories whose collector process is gone (killed, never cleaned)."""
    base = base or tempfile.gettempdir()
    n = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(RUN_DIR_PREFIX):
            continue
        pid = name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


RUN_DIR_PREFIX = "celltap-collector-run-"


def _udp_worker_main(
    index: int,
    addr: ListenAddress,
    config: CollectorConfig,
    hook: HookFactory | None,
    stats_q: mp.Queue,
    stop: threading.Event,
    ready: threading.Event,
    local_url: str | None = None,
    parent_pid: int = 0,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _stop_with_parent(parent_pid)
    keep_batches_on_heap()
    sock = open_udp_socket(addr, config.receive_buffer)
    ingestor = make_ingestor(config, local_dir=_template_dir(config, local_url), worker=index)
    sink = hook(index) if hook is not None else discard
    worker = UdpWorker(sock, ingestor, sink, config.batch_datagrams, on_stats=stats_q.put)
    ready.set()
    try:
        # An exception here ends this process; the parent restarts it and counts the restart.
        worker.run(stop.is_set, config.drain_seconds)
    finally:
        sock.close()
        close_sink(sink)
        ingestor.close()
        stats_q.put(ingestor.stats.drain())  # what closing counted (template writes given up)
        if parent_pid and os.getppid() != parent_pid:
            stats_q.cancel_join_thread()  # no one reads the stats any more: do not wait to hand them on


def _stop_with_parent(parent_pid: int) -> None:
    """Have the kernel send this worker SIGTERM when the collector that forked it dies (even by
    SIGKILL): an orphaned worker would keep its SO_REUSEPORT socket and take a share of the datagrams
    meant for the restarted collector, decoding them for no one."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def close_sink(sink: object) -> None:
    """Let a sink that buffers (the cluster router) deliver what it holds before its worker exits."""
    close = getattr(sink, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing the record sink failed; its undelivered records are counted by it")


class CollectorService:
    """Start/stop the whole collector described by a CollectorConfig."""

    def __init__(
        self,
        config: CollectorConfig,
        hook: HookFactory | None = None,
        metrics: CollectorMetrics | None = None,
        processes: bool | None = None,
    ) -> None:
        self.config = config
        self.hook = hook
        self.metrics = metrics
        self.totals = IngestStats()
        self._totals_lock = threading.Lock()
        self._ctx = mp.get_context("fork")
        self._stop = self._ctx.Event()
        self._stats_done = threading.Event()
        self._stats_q: mp.Queue = self._ctx.Queue()
        self._procs: list = []
        self._threads: list[threading.Thread] = []
        self.processes = config.workers > 1 if processes is None else processes
        self.tcp_servers: list[TcpServer] = []
        self._tcp_sinks: list[object] = []
        self._proc_args: list[tuple] = []
        self.restarts = 0
        self._udp_threads: list[threading.Thread] = []
        # Worker processes of one host share templates through a directory when there is no cluster
        # registry: a restarted worker, or one the kernel's SO_REUSEPORT hash now sends an exporter to,
        # decodes at once instead of waiting for the exporter's next template refresh.  It is the
        # state_dir when configured (kept across runs), else a directory of this run (one snapshot file
        # per worker), removed at stop, or by the next run if this one was killed.
        self._local_dir = None
        if self.processes and not config.registry and not config.state_dir:
            remove_stale_run_dirs()
            self._local_dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-")
        self.local_url = self._local_dir

    def _apply(self, deltas: dict) -> None:
        with self._totals_lock:
            self.totals.merge(deltas)
        if self.metrics is not None:
            self.metrics.apply(deltas)

    def _stats_loop(self) -> None:
        next_check = time.monotonic() + 1.0
        while not self._stats_done.is_set():
            if time.monotonic() >= next_check:
                self._restart_dead_workers()
                if self.metrics is not None and not self._stop.is_set():
                    self.metrics.workers.set(self.workers_alive())
                next_check = time.monotonic() + 1.0
            try:
                self._apply(self._stats_q.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                break

    def _restart_dead_workers(self) -> None:
        if self._stop.is_set():
            return
        for i, p in enumerate(self._procs):
            if p.is_alive() or p.exitcode is None:
                continue
            log.error("UDP worker %s exited with code %s; restarting it", p.name, p.exitcode)
            args = self._proc_args[i]
            args[6].clear()  # its ready event
            self._procs[i] = self._ctx.Process(target=_udp_worker_main, args=args, name=p.name, daemon=True)
            self._procs[i].start()
            self._count_restart()

    def _count_restart(self) -> None:
        with self._totals_lock:
            self.restarts += 1
        if self.metrics is not None:
            self.metrics.worker_restarts.inc()

    def workers_alive(self) -> int:
        """UDP workers (processes or threads) running now."""
        if self._procs:
            return sum(1 for p in self._procs if p.is_alive())
        return sum(1 for t in self._udp_threads if t.is_alive())

    def start(self) -> None:
        """Bind everything and start receiving; returns once every socket is bound."""
        cfg = self.config
        if cfg.metrics_port and self.metrics is None:
            self.metrics = CollectorMetrics()
            serve_metrics(cfg.metrics_port, cfg.metrics_addr)
        for addr in cfg.listen:
            if addr.transport != "tcp":
                # Fail here, in the caller's thread, with the address: a worker that cannot bind
                # would otherwise die in its own thread or process.
                try:
                    probe = socket.socket(
                        socket.AF_INET6 if ":" in addr.host else socket.AF_INET, socket.SOCK_DGRAM
                    )
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    probe.bind((addr.host, addr.port))
                    probe.close()
                except OSError as exc:
                    raise OSError(exc.errno, f"{addr}: {exc.strerror}") from None
        readies = []
        index = 0
        for addr in cfg.listen:
            if addr.transport == "tcp":
                ingestor = make_ingestor(cfg)
                sink = self.hook(-1) if self.hook is not None else discard
                srv = TcpServer(addr, ingestor, sink)
                self._tcp_sinks.append(sink)
                self.tcp_servers.append(srv)

                def tick(ing: Ingestor = ingestor) -> None:
                    self._apply(ing.stats.drain())

                t = threading.Thread(target=srv.run, args=(self._stop.is_set, tick), name="tcp", daemon=True)
                self._threads.append(t)
                continue
            for _ in range(cfg.workers if self.processes else 1):
                ready = self._ctx.Event()
                readies.append(ready)
                args = (index, addr, cfg, self.hook, self._stats_q, self._stop, ready)
                if self.processes:
                    pargs = (*args, self.local_url, os.getpid())
                    self._proc_args.append(pargs)
                    self._procs.append(
                        self._ctx.Process(
                            target=_udp_worker_main, args=pargs, name=f"udp-{index}", daemon=True
                        )
                    )
                else:
                    t = threading.Thread(target=self._udp_thread, args=args, name=f"udp-{index}", daemon=True)
                    self._threads.append(t)
                    self._udp_threads.append(t)
                index += 1
        for p in self._procs:
            p.start()
        for t in self._threads:
            t.start()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        self._stats_thread.start()
        for r in readies:
            if not r.wait(10):
                raise RuntimeError("a UDP worker did not start within 10 s")
        if self.metrics is not None:
            self.metrics.workers.set(len(self._procs) or len(readies))

    def _udp_thread(
        self,
        index: int,
        addr: ListenAddress,
        config: CollectorConfig,
        hook: HookFactory | None,
        stats_q: mp.Queue,
        stop: threading.Event,
        ready: threading.Event,
    ) -> None:
        keep_batches_on_heap()
        sock = open_udp_socket(addr, config.receive_buffer)
        ingestor = make_ingestor(config, local_dir=_template_dir(config, None), worker=index)
        sink = hook(index) if hook is not None else discard
        worker = UdpWorker(sock, ingestor, sink, config.batch_datagrams, on_stats=self._apply)
        ready.set()
        backoff = 0.05
        try:
            while True:
                try:
                    worker.run(stop.is_set, config.drain_seconds)
                    break
                except Exception:
                    # Supervision of a thread worker: the socket and the decoder's state are kept (what
                    # is queued in the socket is still read); the loop starts again, counted.
                    log.exception("UDP worker udp-%d failed; restarting it", index)
                    ingestor.reset_pending()
                    self._count_restart()
                    if stop.wait(backoff):
                        break
                    backoff = min(2.0, backoff * 2)
        finally:
            sock.close()
            close_sink(sink)
            ingestor.close()
            self._apply(ingestor.stats.drain())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, collect the last stats, join workers."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for p in self._procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
        for sink in self._tcp_sinks:
            close_sink(sink)
        for srv in self.tcp_servers:
            srv.ingestor.close()
        self._stats_done.set()
        self._stats_thread.join(max(0.1, deadline - time.monotonic()))
        while True:  # what the workers reported while stopping
            try:
                self._apply(self._stats_q.get(timeout=0.2 if self._procs else 0.01))
            except (queue.Empty, EOFError, OSError):
                break
        if self._local_dir:
            shutil.rmtree(self._local_dir, ignore_errors=True)

    def stopped(self) -> bool:
        """True once stop() was requested."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask everything to stop (safe from a signal handler)."""
        self._stop.set()
