"""The test bed's network: namespaces, veths, a bridge, a monitoring port, and the two captures.

Theory of operation. Five network namespaces per bed, named with a per-process tag so that several
beds (other helpers' tests) coexist:

```
  client ns            mid ns ("the network")                   server ns          auth ns
  eth0 10.77.0.1 --- vcli -+                            +- vsrv --- eth0 10.77.0.2    (DNS auth
                         |-- br0 (Linux bridge) ------|         (nginx, unbound,    10.77.0.3)
                         |                            +- vauth --- eth0 10.77.0.3    postfix, sipp,
                         |                                                        s_server)
                   nft netdev ingress+egress on ms: `dup to tap` --- mon (obs ns): tcpdump, celltap
```

One L2 segment (10.77.0.0/24, fd77::/64). The **monitoring point is the server's link**: an nftables
netdev chain on `vsrv` (ingress and egress hooks) duplicates every frame that enters or leaves the
server's side of the network onto a veth `tap`, whose peer `mon` lives in the observer namespace and
is a pure receiver (no addresses, IPv6 off, promiscuous): a SPAN port with both directions of the
server's link. tcpdump and celltap's own capture (`celltap incubator`, mirror mode, AF_PACKET on
`mon`, one cell with a `pcap:` output) listen on `mon` at the same time, so both files must hold the
same frames. Client<->server traffic and resolver<->authoritative traffic all cross `vsrv` exactly once
per frame.

Faults (this kernel has no `tc netem`, CONFIG_NET_SCH_NETEM is unset):
* loss: an nftables bridge-family forward rule in mid drops every Kth TCP frame the bridge forwards
  (`numgen inc mod K == 0`: deterministic, so a scenario loses the same share each run). Frames lost on
  the way to the server never reach `vsrv`, so the capture shows the hole and the kernel's retransmission;
  frames from the server are captured and then lost, so the capture shows the server's retransmission.
* reordering/duplication: `vcli` and `vsrv` leave the bridge and the middlebox program
  (tests/realnet/middlebox.py: two AF_PACKET sockets, a seeded RNG) forwards between them, holding a
  frame back behind the next one or sending it twice. The monitoring point sees the frames as the
  server receives them (egress of `vsrv`), so the capture holds the reordered and duplicated frames and
  the endpoints' real TCP reactions (dup ACKs, SACK, retransmissions).

Every veth has TSO/GSO/GRO and checksum offload off, so captured frames are wire-sized with real
checksums. Every process started here is tracked by PID and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SUBNET = "10.77.0"
CLIENT, SERVER, AUTH = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
CLIENT6, SERVER6, AUTH6 = "fd77::1", "fd77::2", "fd77::3"
MON_IF = "mon"

TOOLS = ("ip", "nft", "ethtool", "tcpdump", "tshark", "mergecap", "editcap")


class BedError(RuntimeError):
    """The bed could not be set up (a tool or a server failed)."""


def sh(argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture its output; raise BedError naming it on failure."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BedError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()[-800:]}")
    return p


@dataclass
class Proc:
    """A process started in a namespace, with its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the process by PID and reap it (SIGKILL after `timeout`)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def tail(self, n: int = 1500) -> str:
        """The end of the process's log."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class CaptureFiles:
    """The two captures of one scenario."""

    tcpdump: Path
    celltap: Path
    celltap_log: Path
    tcpdump_log: Path


@dataclass
class Bed:
    """One test bed: namespaces, veths, bridge, monitoring port; processes by PID."""

    workdir: Path
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}{random.randrange(256):02x}")
    procs: list[Proc] = field(default_factory=list)
    _up: bool = False

    def ns(self, role: str) -> str:
        """The namespace name of a role (client, mid, server, auth, obs)."""
        return f"rn{self.tag}{role[0]}"

    @property
    def roles(self) -> tuple[str, ...]:
        return ("client", "mid", "server", "auth", "obs")

    # -- set-up ---------------------------------------------------------------------------------

    def up(self) -> None:
        """Create the namespaces, links, addresses and the monitoring port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._up = True
        for r in self.roles:
            sh(["ip", "netns", "add", self.ns(r)])
            self.ip(r, "link", "set", "lo", "up")
        mid = self.ns("mid")
        for role, port in (("client", "vcli"), ("server", "vsrv"), ("auth", "vauth")):
            sh(
                [
                    "ip",
                    "-n",
                    self.ns(role),
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    mid,
                ]
            )
        sh(
            [
                "ip",
                "-n",
                mid,
                "link",
                "add",
                "tap",
                "type",
                "veth",
                "peer",
                "name",
                MON_IF,
                "netns",
                self.ns("obs"),
            ]
        )
        self.ip("mid", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.ip("mid", "link", "set", "dev", "br0", "up")
        self.sysctl("obs", f"net.ipv6.conf.{MON_IF}.disable_ipv6", "1")
        self.sysctl("mid", "net.ipv6.conf.all.disable_ipv6", "1")
        for port in ("vcli", "vsrv", "vauth", "tap"):
            self.quiet_link("mid", port)
        self.quiet_link("obs", MON_IF)
        self.ip("obs", "link", "set", "dev", MON_IF, "promisc", "on")
        for port in ("vcli", "vsrv", "vauth"):
            self.ip("mid", "link", "set", "dev", port, "master", "br0")
        for role, v4, v6 in (("client", CLIENT, CLIENT6), ("server", SERVER, SERVER6), ("auth", AUTH, AUTH6)):
            for key in ("all", "default", "eth0"):
                self.sysctl(role, f"net.ipv6.conf.{key}.accept_dad", "0")
                self.sysctl(role, f"net.ipv6.conf.{key}.router_solicitations", "0")
            self.sysctl(role, "net.ipv4.tcp_fastopen", "3")  # client and server TFO (http_tfo scenario)
            self.quiet_link(role, "eth0")
            self.ip(role, "addr", "add", f"{v4}/24", "dev", "eth0")
            self.ip(role, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        self.nft("mid", MIRROR_RULES)
        self._prime_neighbours()
        self._pin_neighbours()
        time.sleep(1.0)  # link-up chatter (IPv6 DAD, MLD/IGMP reports) ends before the first capture

    def quiet_link(self, role: str, dev: str) -> None:
        """Offloads off (wire-sized frames, real checksums), link up."""
        sh(
            [
                "ip",
                "netns",
                "exec",
                self.ns(role),
                "ethtool",
                "-K",
                dev,
                "tso",
                "off",
                "gso",
                "off",
                "gro",
                "off",
                "tx",
                "off",
                "rx",
                "off",
            ],
            check=False,
        )
        self.ip(role, "link", "set", "dev", dev, "up")

    def _prime_neighbours(self) -> None:
        """Ping across the bridge once so ARP/ND are done before any capture (and the bridge has learnt)."""
        deadline = time.monotonic() + 10
        for dst in (SERVER, AUTH, SERVER6, AUTH6):
            while (
                sh(
                    ["ip", "netns", "exec", self.ns("client"), "ping", "-c1", "-W1", dst],
                    check=False,
                    timeout=5,
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline:
                    raise BedError(f"no connectivity client -> {dst}")
                time.sleep(0.1)
        sh(["ip", "netns", "exec", self.ns("server"), "ping", "-c1", "-W1", AUTH], check=False)
        sh(["ip", "netns", "exec", self.ns("server"), "ping", "-c1", "-W1", AUTH6], check=False)

    def _pin_neighbours(self) -> None:
        """Make the learnt ARP/ND entries permanent: no neighbour probes between scenarios, a quiet link."""
        hosts = {"client": (CLIENT, CLIENT6), "server": (SERVER, SERVER6), "auth": (AUTH, AUTH6)}
        macs = {}
        for role in hosts:
            out = self.run(role, ["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()
            macs[role] = out
        for role in hosts:
            for other, addrs in hosts.items():
                if other == role:
                    continue
                for a in addrs:
                    self.ip(
                        role, "neigh", "replace", a, "lladdr", macs[other], "dev", "eth0", "nud", "permanent"
                    )

    def down(self) -> None:
        """Stop every process started here (by PID), delete the namespaces."""
        for p in reversed(self.procs):
            p.stop(timeout=5)
        self.procs.clear()
        if self._up:
            for r in self.roles:
                sh(["ip", "netns", "del", self.ns(r)], check=False)
            self._up = False

    # -- helpers --------------------------------------------------------------------------------

    def ip(self, role: str, *args: str) -> None:
        """`ip -n NS ...`."""
        sh(["ip", "-n", self.ns(role), *args])

    def sysctl(self, role: str, key: str, value: str) -> None:
        """Set a sysctl inside a namespace."""
        sh(["ip", "netns", "exec", self.ns(role), "sysctl", "-q", "-w", f"{key}={value}"])

    def nft(self, role: str, rules: str) -> None:
        """Load an nftables ruleset fragment in a namespace."""
        sh(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"], input=rules)

    def run(
        self, role: str, argv: list[str], timeout: float = 60, check: bool = False, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command to completion inside a namespace."""
        return sh(["ip", "netns", "exec", self.ns(role), *argv], check=check, timeout=timeout, **kw)

    def spawn(
        self,
        role: str,
        name: str,
        argv: list[str],
        env: dict | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Proc:
        """Start a long-running process in a namespace (stdout+stderr to a log); tracked by PID."""
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            env=env,
            start_new_session=True,
        )
        fh.close()
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop(self, proc: Proc, sig: int = signal.SIGTERM) -> int:
        """Stop one tracked process."""
        rc = proc.stop(sig)
        if proc in self.procs:
            self.procs.remove(proc)
        return rc

    def packet_sockets(self, role: str) -> int:
        """AF_PACKET sockets bound (ETH_P_ALL) to an interface in a namespace (/proc/net/packet is per ns)."""
        out = self.run(role, ["cat", "/proc/net/packet"], check=True).stdout
        # columns: sk RefCnt Type Proto Iface ...: count sockets bound to an interface for ETH_P_ALL
        rows = [line.split() for line in out.strip().splitlines()[1:]]
        return sum(1 for r in rows if len(r) > 4 and r[3] == "0003" and r[4] != "0")

    def wait_port(self, role: str, port: int, udp: bool = False, timeout: float = 15) -> None:
        """Wait until something listens on `port` in the namespace."""
        deadline = time.monotonic() + timeout
        flag = "-lun" if udp else "-ltn"
        while True:
            out = self.run(role, ["ss", flag, f"sport = :{port}"]).stdout
            if len(out.strip().splitlines()) > 1:
                return
            if time.monotonic() > deadline:
                raise BedError(f"nothing listens on {port}/{'udp' if udp else 'tcp'} in {role}")
            time.sleep(0.05)

    # -- captures -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self, name: str, outdir: Path) -> Iterator[CaptureFiles]:
        """tcpdump and `celltap incubator` on the monitoring port for the duration of the block."""
        outdir.mkdir(parents=True, exist_ok=True)
        files = CaptureFiles(
            outdir / f"{name}.tcpdump.pcap",
            outdir / f"{name}.celltap.pcap",
            self.workdir / f"{name}.incubator.log",
            self.workdir / f"{name}.tcpdump.log",
        )
        cfg = self.workdir / f"{name}.incubator.yaml"
        cfg.write_text(
            "mode: mirror\n"
            f"capture: afpacket:{MON_IF}\n"
            f'cells:\n  - {{id: c0, output: "pcap:{files.celltap}", weight: 1}}\n'
            "non_ip: all\n"
            "batch: {frames: 4096, timeout_ms: 5, ring_mb: 32}\n"
        )
        base = self.packet_sockets("obs")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # celltap first, tcpdump second; stopped in reverse order: on a quiet link both hold the same frames
        inc = self.spawn(
            "obs",
            f"{name}.incubator",
            [sys.executable, "-m", "celltap.cli", "incubator", "--config", str(cfg)],
            env=env,
        )
        self._wait_bound(inc, base + 1)
        dump = self.spawn(
            "obs",
            f"{name}.tcpdump",
            [
                "tcpdump",
                "-i",
                MON_IF,
                "-n",
                "-s",
                "0",
                "-U",
                "--immediate-mode",
                "-B",
                "65536",  # KiB: the 1 MiB responses arrive as one burst; the default 2 MiB can overflow
                "-Z",
                "root",
                "-w",
                str(files.tcpdump),
            ],
        )
        self._wait_bound(dump, base + 2)
        time.sleep(0.05)
        try:
            yield files
        finally:
            time.sleep(0.3)  # the last frames' blocks retire (5 ms) and tcpdump writes them
            self.stop(dump, signal.SIGINT)
            time.sleep(0.05)
            rc = self.stop(inc, signal.SIGTERM)
            files.celltap_log.write_text(inc.tail(20000))
            files.tcpdump_log.write_text(dump.tail(4000))
            if rc != 0:
                raise BedError(f"celltap incubator exited {rc}: {inc.tail()}")

    def _wait_bound(self, proc: Proc, count: int, timeout: float = 30) -> None:
        """Wait until `count` capture sockets are bound in the observer namespace."""
        deadline = time.monotonic() + timeout
        while self.packet_sockets("obs") < count:
            if proc.popen.poll() is not None:
                raise BedError(f"{proc.name} exited {proc.popen.returncode}: {proc.tail()}")
            if time.monotonic() > deadline:
                raise BedError(f"{proc.name}: capture did not start")
            time.sleep(0.02)

    def live_analyze(self, config_args: list[str], logs: Path) -> Proc:
        """`celltap analyze -i mon` (live AF_PACKET) on the monitoring port for the whole run."""
        base = self.packet_sockets("obs")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        argv = [sys.executable, "-m", "celltap.cli", "analyze", "-i", MON_IF, *config_args, "-o", str(logs)]
        proc = self.spawn("obs", "live-analyze", argv, env=env)
        self._wait_bound(proc, base + 1)
        return proc

    # -- faults ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def loss(self, every: int) -> Iterator[None]:
        """Drop every `every`-th TCP frame the bridge forwards (both directions)."""
        self.nft("mid", LOSS_RULES.replace("EVERY", str(every)))
        try:
            yield
        finally:
            sh(
                ["ip", "netns", "exec", self.ns("mid"), "nft", "delete", "table", "bridge", "rnloss"],
                check=False,
            )

    @contextlib.contextmanager
    def middlebox(self, seed: int, reorder: float, duplicate: float) -> Iterator[Proc]:
        """Take vcli/vsrv off the bridge and forward between them with tests/realnet/middlebox.py."""
        for port in ("vcli", "vsrv"):
            self.ip("mid", "link", "set", "dev", port, "nomaster")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        box = self.spawn(
            "mid",
            "middlebox",
            [
                sys.executable,
                "-m",
                "tests.realnet.middlebox",
                "vcli",
                "vsrv",
                "--seed",
                str(seed),
                "--reorder",
                str(reorder),
                "--duplicate",
                str(duplicate),
            ],
            env=env,
        )
        deadline = time.monotonic() + 20
        while self.packet_sockets("mid") < 2:
            if box.popen.poll() is not None or time.monotonic() > deadline:
                raise BedError(f"middlebox did not start: {box.tail()}")
            time.sleep(0.05)
        try:
            yield box
        finally:
            self.stop(box)
            for port in ("vcli", "vsrv"):
                self.ip("mid", "link", "set", "dev", port, "master", "br0")


MIRROR_RULES = """
table netdev rnmon {
  chain in_ms { type filter hook ingress device "vsrv" priority 0; dup to "tap"; }
  chain out_ms { type filter hook egress device "vsrv" priority 0; dup to "tap"; }
}
"""

LOSS_RULES = """
table bridge rnloss {
  chain fw { type filter hook forward priority 0; meta l4proto tcp numgen inc mod EVERY == 0 counter drop; }
}
"""
