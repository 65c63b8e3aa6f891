"""Make every scenario's captures: `python -m tests.realnet.make_captures OUTDIR [--only NAME ...]`.

Theory of operation. One bed (namespaces, servers) for the whole run; per scenario: apply its fault,
start both captures on the monitoring port, run the clients, stop the captures, remove the fault.
OUTDIR gets `<scenario>.tcpdump.pcap`, `<scenario>.celltap.pcap` (the incubator's own AF_PACKET
capture), `all.tcpdump.pcap` / `all.celltap.pcap` (the scenarios concatenated in order, for one-pass
analysis), `manifest.json` (scenarios, protocols, faults, frame counts, what the tools reported),
`logs/` (postfix's maillog, nginx's access log, the incubator's logs), `live-logs/` (the logs of
`celltap analyze -i mon`, live on the monitoring port for the whole run) and a README.
Needs root. Exit code 1 and one line naming the reason when the bed cannot be built.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.realnet.analysis import config_args
from tests.realnet.bed import AUTH, CLIENT, SERVER, Bed, BedError
from tests.realnet.scenarios import Ctx, Scenario, by_name
from tests.realnet.servers import start_servers, stop_servers, tools_missing


def pcap_records(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp in ns, frame) of each record of a classic pcap file (either byte order, µs or ns)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    rec = struct.Struct(endian + "IIII")
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, pos)
        pos += 16
        out.append((sec * 1_000_000_000 + (frac if nano else frac * 1000), data[pos : pos + incl]))
        pos += incl
    return out


def pcap_frames(path: Path) -> list[bytes]:
    """The frames of a classic pcap file, without timestamps."""
    return [f for _, f in pcap_records(path)]


def _fault(bed: Bed, sc: Scenario) -> contextlib.AbstractContextManager:
    if not sc.fault:
        return contextlib.nullcontext()
    if sc.fault[0] == "loss":
        return bed.loss(sc.fault[1])
    if sc.fault[0] == "middlebox":
        _, seed, reorder, dup = sc.fault
        return bed.middlebox(seed, reorder, dup)
    raise ValueError(f"unknown fault {sc.fault!r}")


def tcpdump_dropped(log: str) -> int | None:
    """Frames tcpdump's own report says the kernel dropped (None when it printed no report)."""
    m = re.search(r"^(\d+) packets? dropped by kernel", log, re.M)
    return int(m.group(1)) if m else None


def run_scenario(bed: Bed, servers, sc: Scenario, outdir: Path, scratch: Path) -> dict:
    """Capture one scenario; return its manifest entry."""
    tmp = scratch / sc.name
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ctx = Ctx(bed, servers, tmp)
    if sc.before is not None:
        sc.before(ctx)
    with _fault(bed, sc) as fault_proc, bed.capture(sc.name, outdir) as files:
        tools = sc.run(ctx)
    entry = {
        "name": sc.name,
        "protocols": list(sc.protocols),
        "what": sc.what,
        "fault": list(sc.fault),
        "tcpdump": files.tcpdump.name,
        "celltap": files.celltap.name,
        "frames_tcpdump": len(pcap_frames(files.tcpdump)),
        "frames_celltap": len(pcap_frames(files.celltap)),
        "tcpdump_dropped": tcpdump_dropped(files.tcpdump_log.read_text(errors="replace")),
        "seconds": round(time.time() - t0, 2),
        "tools": tools,
    }
    if fault_proc is not None:
        entry["middlebox"] = fault_proc.tail(600).strip().splitlines()
    inc_log = files.celltap_log.read_text(errors="replace").strip().splitlines()
    entry["incubator"] = [ln for ln in inc_log if "WARNING" in ln or "ERROR" in ln][-5:]
    logs = outdir / "logs"
    logs.mkdir(exist_ok=True)
    shutil.copy(files.celltap_log, logs / f"{sc.name}.incubator.log")
    return entry


README = """# Test-bed captures (issue 13)

Made by `python -m tests.realnet.make_captures OUTDIR` (tests/realnet/, see docs/realnet.md): real
servers (nginx, nsd, unbound, postfix, sipp uas, openssl s_server) and real clients (curl, wget, dig,
kdig, swaks, sipp uac, openssl s_client, Python sockets/smtplib where no Debian tool sends the case)
in network namespaces. Client {client}, server {server} (nginx :80/:443, unbound :53, postfix
:25 with STARTTLS and :2525 without, sipp :5060, s_server :4433), authoritative DNS (nsd) {auth}.

Monitoring point: the server's link (a SPAN of both directions of the server-side bridge port,
nftables netdev `dup`). Each scenario has two captures of the same frames: `*.tcpdump.pcap`
(tcpdump) and `*.celltap.pcap` (celltap's own capture: `celltap incubator`, AF_PACKET mirror mode,
one cell with a `pcap:` output). `all.*.pcap` are the scenarios concatenated in order.
`manifest.json` has, per scenario, the frame counts and what each tool reported (exit codes,
HTTP status codes, SMTP replies). Faults: no netem on this kernel; loss = nftables drops every Kth
TCP frame on the bridge; reorder/duplicate = an AF_PACKET middlebox (tests/realnet/middlebox.py).

| scenario | protocols | fault | frames (tcpdump / celltap) | what |
|---|---|---|---|---|
{rows}
"""


def write_readme(outdir: Path, entries: list[dict]) -> None:
    """README.md listing the scenarios."""
    rows = "\n".join(
        f"| {e['name']} | {', '.join(e['protocols'])} | {' '.join(map(str, e['fault'])) or '-'} | "
        f"{e['frames_tcpdump']} / {e['frames_celltap']} | {e['what']} |"
        for e in entries
    )
    (outdir / "README.md").write_text(README.format(client=CLIENT, server=SERVER, auth=AUTH, rows=rows))


def make_captures(outdir: Path, names: list[str] | None = None, keep: bool = False) -> dict:
    """Build the bed, capture the scenarios into `outdir`, write manifest + README; return the manifest."""
    missing = tools_missing()
    if missing:
        raise BedError(f"missing tools: {', '.join(missing)} (scripts/system-packages.txt)")
    outdir.mkdir(parents=True, exist_ok=True)
    scenarios = by_name(names)
    scratch = Path(tempfile.mkdtemp(prefix="realnet-"))
    scratch.chmod(0o755)  # postfix daemons run as user postfix and must reach their data directory
    bed = Bed(scratch / "bed")
    entries = []
    t0 = time.time()
    try:
        bed.up()
        servers = start_servers(bed, scratch / "srv")
        if (outdir / "live-logs").exists():
            shutil.rmtree(outdir / "live-logs")
        live = bed.live_analyze(config_args(scratch), outdir / "live-logs")
        setup = time.time() - t0
        for sc in scenarios:
            entries.append(run_scenario(bed, servers, sc, outdir, scratch))
        time.sleep(0.3)
        live_rc = bed.stop(live, signal.SIGTERM)
        live_info = {"logs": "live-logs", "rc": live_rc, "summary": live.tail(1500).strip().splitlines()[-8:]}
        stop_servers(bed, servers)
        logs = outdir / "logs"
        logs.mkdir(exist_ok=True)
        for src in (servers.maillog, servers.root / "nginx" / "access.log"):
            if src.exists():
                shutil.copy(src, logs / src.name)
    finally:
        bed.down()
        if keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    for kind in ("tcpdump", "celltap"):
        files = [str(outdir / e[kind]) for e in entries]
        subprocess.run(
            ["mergecap", "-a", "-F", "pcap", "-w", str(outdir / f"all.{kind}.pcap"), *files],
            check=True,
            capture_output=True,
        )
    manifest = {
        "setup_seconds": round(setup, 2),
        "total_seconds": round(time.time() - t0, 2),
        "client": CLIENT,
        "server": SERVER,
        "auth": AUTH,
        "live": live_info,
        "scenarios": entries,
    }
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    write_readme(outdir, entries)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description="capture the test bed's scenarios")
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--only", nargs="*", help="scenario names (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, server logs)")
    args = ap.parse_args(argv)
    try:
        m = make_captures(args.outdir, args.only, args.keep)
    except BedError as exc:
        print(f"make_captures: {exc}", file=sys.stderr)
        return 1
    for e in m["scenarios"]:
        rcs = [t.get("rc") for t in e["tools"]]
        print(
            f"{e['name']:16} {e['frames_tcpdump']:6} / {e['frames_celltap']:6} frames "
            f"{e['seconds']:5}s  rc={rcs}"
        )
    print(f"total {m['total_seconds']}s (setup {m['setup_seconds']}s) -> {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
