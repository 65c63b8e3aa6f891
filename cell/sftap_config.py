"""SF-TAP flow abstractor configuration: YAML map of rule name -> keys, validated into dataclasses.

Accepts every key of SF-TAP's published configuration (`global: home, timeout, lru, cache,
tcp_threads, regex_threads`; rule keys `up, down, proto, if, format, body, nice, balance, port,
utf8`) plus celltap's own `global` extensions. Anything else is an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celltap.cell.rule_regex import RegexError, RulePattern
from celltap.cell.store.config import StoreConfig, StoreConfigError, parse_store

from celltap.config import ConfigError as SharedConfigError
from celltap.config import read_yaml
from celltap.config_schema import check
from celltap.user_errors import UserError

SPECIAL_RULES = ("loopback7", "pcap", "tcp_default", "udp_default", "icmp", "icmpv6")
PROTOS = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmp", "ICMPV6": "icmpv6"}

# SF-TAP's own global keys that celltap accepts but has no use for (threading and regex caching are
# internal matters of the C++ implementation).
_SFTAP_GLOBAL_IGNORED = ("lru", "cache", "tcp_threads", "regex_threads")
_GLOBAL_KEYS = (
    "home",
    "timeout",
    *_SFTAP_GLOBAL_IGNORED,
    # celltap extensions
    "udp_timeout",
    "hop_limit",
    "midstream",
    "classify_bytes",
    "classify_hold",
    "classify_memory",
    "ooo_limit",
    "ooo_memory",
    "reader_buffer",
    "loopback_max_len",
    "max_flows",
    "memory_budget",
    "defrag_timeout",
    "defrag_memory",
    "gc_scan",
    "cell_id",
    "decapsulate",
    "dedup",
    "dedup_window",
    "socket_group",
)
_RULE_KEYS = ("up", "down", "proto", "if", "format", "body", "nice", "balance", "port", "utf8")


def _range(lo: float, hi: float, kind: str = "integer") -> dict[str, Any]:
    return {"type": kind, "minimum": lo, "maximum": hi}


def _seconds() -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "maximum": 10**7}


# Ranges of the values once read (yes/no and numbers in strings are SF-TAP's and converted first):
# JSON Schema documents checked by celltap.config_schema; the tests walk them with out-of-range values.
GLOBAL_RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timeout": _seconds(),
        "udp_timeout": _seconds(),
        "defrag_timeout": _seconds(),
        "hop_limit": _range(0, 255),  # the events' hop field is one byte
        "cell_id": _range(0, 2**32 - 1),  # the IPFIX observation domain
        "tcp_threads": _range(1, 1024),
        "regex_threads": _range(1, 1024),
        "classify_bytes": _range(1, 1 << 24),
        "classify_hold": _range(1, 1 << 30),
        "classify_memory": _range(1, 1 << 40),
        "ooo_limit": _range(1, 1 << 30),
        "ooo_memory": _range(1, 1 << 40),
        "reader_buffer": _range(4096, 1 << 40),
        "max_flows": _range(1, 1 << 32),
        "memory_budget": _range(1 << 28, 1 << 46),
        "defrag_memory": _range(1, 1 << 40),
        "gc_scan": _range(1, 1 << 24),
    },
}
# The buffer caps that are shares of `memory_budget` when the config leaves them unset (budget // share;
# at the default 4 GiB: 64 MiB, 256 MiB, 256 MiB, 64 MiB). See cell/memory_budget.py.
CAP_SHARES = {"defrag_memory": 64, "ooo_memory": 16, "classify_memory": 16, "reader_buffer": 64}
DEFAULT_MEMORY_BUDGET = 4 << 30

RULE_RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {"nice": _range(-(2**31), 2**31 - 1), "balance": _range(1, 1024)},
}


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class Rule:
    """One classification rule (or special interface) of the configuration."""

    name: str
    proto: str = ""  # tcp | udp | icmp | icmpv6 | "" (special interfaces without a protocol)
    ifname: str = ""
    up: RulePattern | None = None
    down: RulePattern | None = None
    up_text: str = ""
    down_text: str = ""
    utf8: bool = False  # SF-TAP's `utf8: yes`: patterns and data are UTF-8 for RE2 (default latin-1)
    ports: tuple[tuple[int, int], ...] = ()
    fmt: str = "text"
    body: bool = True
    nice: int = 100
    balance: int = 1
    order: int = 0  # position in the file: the tie-break inside one nice level

    @property
    def has_regex(self) -> bool:
        """True when the rule classifies by payload (SF-TAP puts these before port rules)."""
        return self.up is not None or self.down is not None

    def port_match(self, port1: int, port2: int) -> bool:
        """SF-TAP's is_in_port: an empty list matches everything, otherwise either side matches."""
        if not self.ports:
            return True
        for lo, hi in self.ports:
            if lo <= port1 <= hi or lo <= port2 <= hi:
                return True
        return False

    def socket_names(self) -> list[str]:
        """Interface socket names: `if`, or `if0 .. ifN-1` with `balance: N`."""
        if self.balance > 1:
            return [f"{self.ifname}{i}" for i in range(self.balance)]
        return [self.ifname]


@dataclass
class GlobalConfig:
    """The `global` section."""

    home: str = "/tmp/sf-tap"
    timeout: float = 30.0
    udp_timeout: float = 30.0
    hop_limit: int = 2
    midstream: bool = True  # pick up flows whose SYN was not seen (Zeek does)
    classify_bytes: int = 4096
    classify_hold: int = 1 << 16  # real memory one flow holds back waiting for the silent side's first bytes
    classify_memory: int = DEFAULT_MEMORY_BUDGET // 16  # all flows' held-back memory: past it, flows classify
    ooo_limit: int = 1 << 20
    ooo_memory: int = DEFAULT_MEMORY_BUDGET // 16  # all flows' out-of-order memory: past it, holes skipped
    reader_buffer: int = DEFAULT_MEMORY_BUDGET // 64
    loopback_max_len: int = 1 << 20  # a loopback DATA event announcing more is skipped and counted
    max_flows: int | None = None  # None: what memory_budget leaves (cell/memory_budget.py)
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # the pod's memory limit: the caps left unset follow it
    defrag_timeout: float = 30.0
    defrag_memory: int = DEFAULT_MEMORY_BUDGET // 64
    gc_scan: int = 16384
    cell_id: int = 0
    decapsulate: bool = True  # GRE / ERSPAN / VXLAN / IP in IP: the inner flow (no: the tunnel's own flow)
    dedup: bool = False  # drop duplicate frames (cell/dedup.py), counted as dropped `duplicate`
    dedup_window: float = 0.01  # seconds between two copies of one packet
    socket_group: int | None = None  # gid of the loopback7/pcap input sockets (0660); None: 0600, owner only


@dataclass
class CellConfig:
    """A validated SF-TAP configuration."""

    glob: GlobalConfig = field(default_factory=GlobalConfig)
    rules: list[Rule] = field(default_factory=list)  # classification rules (TCP and UDP)
    special: dict[str, Rule] = field(default_factory=dict)
    store: StoreConfig | None = None  # celltap's `store:` section (the packet store; opt-in)

    def rules_for(self, proto: str) -> list[Rule]:
        """Rules of one protocol in evaluation order: nice, then regex before port, then file order."""
        sel = [r for r in self.rules if r.proto == proto]
        return sorted(sel, key=lambda r: (r.nice, 0 if r.has_regex else 1, r.order))


def _yes_no(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    raise ConfigError(f"{where}: expected yes or no, got {value!r}")


def _int(value: Any, where: str, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if lo is not None and n < lo:
        raise ConfigError(f"{where}: must be at least {lo}, got {n}")
    return n


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if x <= 0:
        raise ConfigError(f"{where}: must be positive, got {x}")
    return x


def parse_ports(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """Parse `53`, `53,5353,5355` or `100-110` into (lo, hi) ranges."""
    text = str(value)
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, _, hi_s = part.partition("-")
        lo = _int(lo_s.strip(), where)
        hi = _int(hi_s.strip(), where) if hi_s.strip() else lo
        if not (0 <= lo <= hi <= 65535):
            raise ConfigError(f"{where}: bad port range {part!r}")
        out.append((lo, hi))
    if not out:
        raise ConfigError(f"{where}: empty port list")
    return tuple(out)


def _regex(text: str, where: str, utf8: bool) -> RulePattern:
    # RE2 as SF-TAP compiles it (cell/rule_regex.py); latin-1 unless `utf8: yes`
    try:
        return RulePattern(text, utf8)
    except RegexError as exc:
        raise ConfigError(f"{where}: RE2 cannot compile {text!r}: {exc}") from None


def parse_group(value: Any, where: str) -> int:
    """A group name or numeric gid that exists on this host, as a gid (ConfigError naming `where`)."""
    import grp

    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a group name or gid, got {value!r}")
    try:
        if isinstance(value, int) or str(value).isdigit():
            return grp.getgrgid(int(value)).gr_gid
        return grp.getgrnam(str(value)).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError(f"{where}: no group {value!r} on this host") from None


def _parse_global(section: Any) -> GlobalConfig:
    g = GlobalConfig()
    if section is None:
        return g
    if not isinstance(section, dict):
        raise ConfigError("global: expected a map of keys")
    for key, value in section.items():
        where = f"global.{key}"
        if key not in _GLOBAL_KEYS:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(_GLOBAL_KEYS)})")
        if key == "home":
            g.home = str(value)
        elif key == "timeout":
            g.timeout = _number(value, where)
        elif key == "udp_timeout":
            g.udp_timeout = _number(value, where)
        elif key == "defrag_timeout":
            g.defrag_timeout = _number(value, where)
        elif key == "dedup_window":
            g.dedup_window = _number(value, where)
        elif key in ("midstream", "decapsulate", "dedup"):
            setattr(g, key, _yes_no(value, where))
        elif key in ("lru", "cache"):
            _yes_no(value, where)
        elif key in ("tcp_threads", "regex_threads"):
            _int(value, where, 1)
        elif key == "hop_limit":
            g.hop_limit = _int(value, where, 0)
        elif key == "cell_id":
            g.cell_id = _int(value, where, 0)
        elif key == "socket_group":
            g.socket_group = parse_group(value, where)
        else:
            setattr(g, key, _int(value, where, 1))
    for key, share in CAP_SHARES.items():
        if key not in section:
            setattr(g, key, g.memory_budget // share)
    ranged = {
        k: getattr(g, k) if hasattr(g, k) else _int(v, f"global.{k}")
        for k, v in section.items()
        if k in GLOBAL_RANGES["properties"]
    }
    check(ranged, GLOBAL_RANGES, "", ConfigError, "global")
    return g


def _parse_rule(name: str, section: Any, order: int) -> Rule:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: expected a map of keys")
    rule = Rule(name=name, order=order, ifname=name)
    for key, value in section.items():
        where = f"{name}.{key}"
        if key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(_RULE_KEYS)})")
        if key == "up":
            rule.up_text = str(value)
        elif key == "down":
            rule.down_text = str(value)
        elif key == "proto":
            proto = PROTOS.get(str(value).upper())
            if proto is None:
                raise ConfigError(f"{where}: expected one of {', '.join(PROTOS)}, got {value!r}")
            rule.proto = proto
        elif key == "if":
            ifname = str(value)
            if not ifname or "/" in ifname or ifname in (".", ".."):
                raise ConfigError(f"{where}: bad interface name {value!r}")
            rule.ifname = ifname
        elif key == "format":
            if value not in ("text", "binary"):
                raise ConfigError(f"{where}: expected text or binary, got {value!r}")
            rule.fmt = value
        elif key == "body":
            rule.body = _yes_no(value, where)
        elif key == "nice":
            rule.nice = _int(value, where)
        elif key == "balance":
            rule.balance = _int(value, where, 1)
        elif key == "port":
            rule.ports = parse_ports(value, where)
        elif key == "utf8":
            rule.utf8 = _yes_no(value, where)
    check({"nice": rule.nice, "balance": rule.balance}, RULE_RANGES, "", ConfigError, name)
    # compiled once every key is read: `utf8` may come after the patterns
    if "up" in section:
        rule.up = _regex(rule.up_text, f"{name}.up", rule.utf8)
    if "down" in section:
        rule.down = _regex(rule.down_text, f"{name}.down", rule.utf8)
    if name == "tcp_default":
        rule.proto = rule.proto or "tcp"
    elif name == "udp_default":
        rule.proto = rule.proto or "udp"
    elif name in ("icmp", "icmpv6"):
        rule.proto = rule.proto or name
    elif name not in ("loopback7", "pcap"):
        if not rule.proto:
            raise ConfigError(f"{name}.proto: missing (TCP or UDP)")
        if rule.proto not in ("tcp", "udp"):
            raise ConfigError(f"{name}.proto: classification rules take TCP or UDP, got {rule.proto}")
    return rule


def parse_config(doc: Any) -> CellConfig:
    """Validate a parsed YAML document."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("configuration: expected a map of rule name to keys")
    cfg = CellConfig(glob=_parse_global(doc.get("global")))
    names: dict[tuple[str, str], tuple[int, str, bool]] = {}
    for order, (name, section) in enumerate(doc.items()):
        if name == "global":
            continue
        if name == "store":
            try:
                cfg.store = parse_store(section)
            except StoreConfigError as exc:
                raise ConfigError(str(exc)) from None
            continue
        name = str(name)
        rule = _parse_rule(name, section, order)
        if name in SPECIAL_RULES:
            cfg.special[name] = rule
        else:
            cfg.rules.append(rule)
        # Two rules may share one interface (SF-TAP's pop/smtp) only if they agree on how it is
        # written: the socket set and the format are per interface.
        shape = (rule.balance, rule.fmt, rule.body)
        for sock in rule.socket_names():
            prev = names.get((rule.proto, sock))
            if prev is not None and prev != shape:
                raise ConfigError(
                    f"{name}.if: interface {rule.proto}/{sock} is shared with a rule of another balance, "
                    "format or body setting"
                )
            names[(rule.proto, sock)] = shape
    return cfg


def load_config(path: str | Path, global_overrides: dict[str, Any] | None = None) -> CellConfig:
    """Read and validate an SF-TAP YAML configuration file; `global_overrides` replace `global` keys
    before validation (a command-line option then counts exactly as the key would)."""
    try:
        doc = read_yaml(path)
    except SharedConfigError as exc:
        raise ConfigError(str(exc)) from None
    if global_overrides and (doc is None or isinstance(doc, dict)):
        doc = dict(doc or {})
        glob = doc.get("global")
        doc["global"] = {**(glob if isinstance(glob, dict) else {}), **global_overrides}
    return parse_config(doc)
