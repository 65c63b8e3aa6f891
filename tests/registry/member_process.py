"""A separate process for the two-process tests: registers one member, prints what it sees.

    python member_process.py URL CLUSTER KIND ID TTL

Prints one JSON line {"members": [ids...]} on every membership change; runs until killed or
until stdin closes (then it withdraws its registration and exits 0).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from celltap.registry import Membership, open_registry


def main() -> int:
    """Register, report changes on stdout, withdraw when stdin closes."""
    url, cluster, kind, member_id, ttl = sys.argv[1:6]
    registry = open_registry(url)
    membership = Membership(registry, cluster, ttl=float(ttl), retry_initial=0.1, retry_max=0.5)
    lock = threading.Lock()

    def report(members: dict) -> None:
        with lock:
            print(json.dumps({"members": sorted(members)}), flush=True)

    membership.watch(kind, on_change=report)
    membership.register(kind, member_id, {"pid": os.getpid()})
    sys.stdin.read()
    membership.close()
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
