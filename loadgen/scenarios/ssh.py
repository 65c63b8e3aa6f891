"""`ssh`: SSH-2 sessions on port 22: banner exchange, KEXINIT both ways, curve25519 ECDH init/reply,
NEWKEYS, then encrypted binary packets both ways. `--count` = connections."""

from __future__ import annotations

import random
import struct

from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 6
CLIENT_BANNERS = (
    "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u1",
    "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.4",
    "SSH-2.0-PuTTY_Release_0.79",
    "SSH-2.0-libssh2_1.11.0",
)
SERVER_BANNERS = ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u1", "SSH-2.0-OpenSSH_9.3", "SSH-2.0-dropbear_2022.83")
KEX = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,diffie-hellman-group14-sha256"
HOSTKEY = "ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256"
CIPHERS = "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com"
MACS = "umac-64-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-256,hmac-sha1"
COMP = "none,zlib@openssh.com"


def _string(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("!I", len(b)) + b


def binary_packet(rng: random.Random, payload: bytes, block: int = 8) -> bytes:
    """An unencrypted SSH binary packet: length, padding length, payload, random padding (>= 4)."""
    pad = block - (5 + len(payload)) % block
    if pad < 4:
        pad += block
    return struct.pack("!IB", 1 + len(payload) + pad, pad) + payload + rng.randbytes(pad)


def kexinit(rng: random.Random) -> bytes:
    """An SSH_MSG_KEXINIT payload."""
    lists = [KEX, HOSTKEY, CIPHERS, CIPHERS, MACS, MACS, COMP, COMP, "", ""]
    return bytes((20,)) + rng.randbytes(16) + b"".join(_string(x) for x in lists) + b"\x00" + bytes(4)


def conversation(rng: random.Random, link: Link) -> Frames:
    """One SSH connection on `link`: key exchange, then 4-30 encrypted packets, FIN."""
    conv = TcpConversation(link, ephemeral_port(rng), 22, rng)
    conv.handshake()
    conv.send(False, (rng.choice(SERVER_BANNERS) + "\r\n").encode(), peer_ack=False)
    conv.send(True, (rng.choice(CLIENT_BANNERS) + "\r\n").encode(), peer_ack=False)
    conv.send(True, binary_packet(rng, kexinit(rng)), peer_ack=False)
    conv.send(False, binary_packet(rng, kexinit(rng)), peer_ack=False)
    conv.send(True, binary_packet(rng, bytes((30,)) + _string(rng.randbytes(32))), peer_ack=False)
    hostkey = _string("ssh-ed25519") + _string(rng.randbytes(32))
    sig = _string("ssh-ed25519") + _string(rng.randbytes(64))
    reply = bytes((31,)) + _string(hostkey) + _string(rng.randbytes(32)) + _string(sig)
    conv.send(False, binary_packet(rng, reply) + binary_packet(rng, b"\x15"), peer_ack=False)
    conv.send(True, binary_packet(rng, b"\x15"), peer_ack=False)
    # After NEWKEYS everything is ciphertext: chacha20-poly1305 packets are 4 + 8k + 16 bytes.
    for k in range(rng.randint(4, 30)):
        from_client = k % 2 == 0
        size = 4 + 8 * rng.randint(4, 60 if from_client else 400) + 16
        conv.send(from_client, rng.randbytes(size), peer_ack=False)
    conv.fin(from_client=True)
    return conv.frames


@register_flows(
    "ssh", "SSH-2 banner exchange, KEXINIT/ECDH/NEWKEYS, encrypted packets on port 22", "TCP connections", 30
)
def ssh_flow(rng: random.Random, i: int) -> Frames:
    """Connection number i of the ssh scenario."""
    return conversation(rng, make_link(rng, NET, i))
