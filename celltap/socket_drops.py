"""What the kernel dropped on a socket before its owner read it, for the owner's drop counters.

A UDP socket whose receive buffer is full drops datagrams; Linux counts them per socket in the last
column of /proc/net/udp (and udp6), found by the socket's inode.  Reading that table costs a scan of
every UDP socket of the namespace, so owners read it periodically (a report interval), not per
datagram.  AF_PACKET rings count their own drops (PACKET_STATISTICS, see
celltap.incubator.capture.afpacket).
"""

from __future__ import annotations

import os
import socket


def udp_receive_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (its receive buffer was full) since it was opened,
    from /proc/net/udp*; None if the socket is not listed there."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 13 and parts[9] == inode:
                        return int(parts[-1])
        except OSError:
            continue
    return None
