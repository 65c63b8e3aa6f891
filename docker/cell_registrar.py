"""Register a cell in the registry on its behalf, for as long as the cell answers (a pod sidecar).

`celltap cell --registry ...` can register itself, but it cannot notice that it is alive yet hung;
this process runs beside each cell in Kubernetes and holds the cell's lease only while the cell's
/metrics answers:

    python cell_registrar.py --registry etcd://... --cluster default --id 3 \\
        --input vxlan://10.244.1.7:4789 --weight 1 --health http://127.0.0.1:9471/metrics

It registers /celltap/<cluster>/cells/<id> = {"id", "input", "weight"} once the cell's /metrics
endpoint answers, keeps the lease alive, and withdraws it (so incubators stop sending new flows at
once instead of at lease expiry) when the cell stops answering or on SIGTERM.  After withdrawing
for an unhealthy cell it exits 1, and the kubelet restarts it; it registers again when the cell
answers again.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request

from celltap.registry import Membership, RegistryError, open_registry

log = logging.getLogger("celltap.cell_registrar")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the registrar."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True, help="etcd://host:2379[,...] or file:///path")
    p.add_argument("--cluster", default="default")
    p.add_argument("--id", required=True, help="the cell id (its StatefulSet ordinal)")
    p.add_argument("--input", required=True, help="where incubators send: vxlan://POD_IP:PORT")
    p.add_argument("--weight", type=int, default=1)
    p.add_argument("--health", required=True, help="the cell's /metrics URL")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between health checks")
    p.add_argument("--failures", type=int, default=3, help="failed checks in a row before withdrawing")
    p.add_argument("--ttl", type=float, default=10.0, help="lease seconds")
    p.add_argument("--store", help="the cell's packet store endpoint (http://POD_IP:PORT), if it has one")
    return p.parse_args(argv)


def healthy(url: str, timeout: float) -> bool:
    """True when the cell's metrics endpoint answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """Wait for the cell, register it, watch it; 0 after `stop`, 1 after the cell stopped answering."""
    while not healthy(args.health, args.interval):
        if stop.wait(args.interval):
            return 0
    try:
        membership = Membership(open_registry(args.registry), args.cluster, ttl=args.ttl)
    except RegistryError as exc:
        log.error("registry %s: %s", args.registry, exc)
        return 2
    value: dict[str, object] = {"input": args.input, "weight": args.weight}
    if args.store:
        value["store"] = args.store
    membership.register("cells", args.id, value)
    log.info("cell %s registered as %s", args.id, args.input)
    failures = 0
    try:
        while not stop.wait(args.interval):
            failures = 0 if healthy(args.health, args.interval) else failures + 1
            if failures >= args.failures:
                log.warning("cell %s stopped answering on %s; withdrawing it", args.id, args.health)
                return 1
        return 0
    finally:
        membership.close(withdraw=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run(args, stop)


if __name__ == "__main__":
    sys.exit(main())
