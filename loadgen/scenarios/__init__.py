"""Every traffic scenario; importing this package registers them all."""

from celltap.loadgen.scenarios import (
    cps,  # noqa: F401
    dns,  # noqa: F401
    frag,  # noqa: F401
    http,  # noqa: F401
    ipv6,  # noqa: F401
    mixed,  # noqa: F401
    pingsctp,  # noqa: F401
    sip,  # noqa: F401
    small,  # noqa: F401
    smtp,  # noqa: F401
    ssh,  # noqa: F401
    tcpfaults,  # noqa: F401
    tls,  # noqa: F401
    torrent,  # noqa: F401
    vlan,  # noqa: F401
)
