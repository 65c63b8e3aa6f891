"""A thin ctypes binding of Debian's libbpf.so.1: open and load an object, maps, XDP links.

Theory of operation: libbpf does all the BPF work (ELF parsing, BTF, map creation, relocations,
the verifier dialogue); this module only passes pointers.  libbpf 1.x returns NULL / a negative
errno on failure; both become `BpfError` with libbpf's last messages (verifier log included),
which libbpf hands to a print callback we install (formatted with libc's vsnprintf).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_messages: list[str] = []
_lock = threading.Lock()
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
BPF_ANY = 0
SO_ATTACH_BPF = 50
SO_DETACH_BPF = 27


PROGRAMS = (
    "xdp_incubator",
    "xdp_egress",
    "count_xmit_drops",
    "count_redirect_err",
    "dicap_filter",
    "xdp_pass",
    "xdp_sink",
    "xdp_redirect_floor",
)


class BpfError(OSError):
    """A libbpf call failed; the message carries libbpf's own last lines."""


def _print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(1 << 20)  # a verifier log comes as one message
    _libc.vsnprintf(buf, 1 << 20, fmt, ctypes.c_void_p(args))
    with _lock:
        _messages.append(buf.value.decode(errors="replace").rstrip())
        del _messages[:-200]
    return 0


_print_cb = _PRINT_FN(_print)


def lib() -> ctypes.CDLL:
    """libbpf, loaded once (raises BpfError when the library is missing)."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        L = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError(f"libbpf not found ({exc}); install Debian's libbpf1") from exc
    vp, ci, cu, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    sigs = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_map__set_max_entries": (ci, [vp, cu]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
        "bpf_program__attach_xdp": (vp, [vp, ci]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_link__destroy": (ci, [vp]),
        "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
        "bpf_map_update_batch": (ci, [ci, vp, vp, ctypes.POINTER(ctypes.c_uint32), vp]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
        "bpf_map_delete_elem": (ci, [ci, vp]),
        "bpf_map_get_next_key": (ci, [ci, vp, vp]),
        "libbpf_num_possible_cpus": (ci, []),
        "bpf_prog_test_run_opts": (ci, [ci, vp]),
        "bpf_obj_get_info_by_fd": (ci, [ci, vp, vp]),
        "libbpf_set_print": (vp, [_PRINT_FN]),
    }
    for fn, (res, argtypes) in sigs.items():
        f = getattr(L, fn)
        f.restype = res
        f.argtypes = argtypes
    L.libbpf_set_print(_print_cb)
    _lib = L
    return L


def last_messages(n: int = 8) -> str:
    """libbpf's last `n` non-empty messages, joined (for error lines)."""
    with _lock:
        lines = [m for m in _messages if m][-n:]
    return " | ".join(lines)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        raise BpfError(err, f"{what}: {os.strerror(err)}; libbpf: {last_messages()}")
    return ret


def num_cpus() -> int:
    """Possible CPUs: the number of values a per-CPU map lookup returns."""
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """One map of a loaded object, by fd; keys and values are bytes of the C layouts."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd

    def id(self) -> int:
        """The kernel's id of this map (unique on the host)."""
        info = ctypes.create_string_buffer(128)
        size = ctypes.c_uint32(128)
        _check(lib().bpf_obj_get_info_by_fd(self.fd, info, ctypes.byref(size)), f"map info {self.name}")
        return int.from_bytes(info.raw[4:8], "little")  # struct bpf_map_info: type, id, ...

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Insert or replace one element."""
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), f"update {self.name}")

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """Insert or replace `count` elements in one call (packed keys and values)."""
        n = ctypes.c_uint32(count)
        ret = lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(n), None)
        _check(ret, f"update {self.name}")
        if n.value != count:
            raise BpfError(5, f"update {self.name}: {n.value} of {count} elements written")

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        """The element's value bytes, or None when absent."""
        out = ctypes.create_string_buffer(value_size)
        ret = lib().bpf_map_lookup_elem(self.fd, key, out)
        if ret < 0:
            if -ret == 2 or ctypes.get_errno() == 2:  # ENOENT
                return None
            _check(ret, f"lookup {self.name}")
        return out.raw

    def delete(self, key: bytes) -> bool:
        """Delete one element; False when it was absent."""
        return lib().bpf_map_delete_elem(self.fd, key) == 0

    def keys(self, key_size: int) -> Iterator[bytes]:
        """Every key (a snapshot walk; entries may change meanwhile)."""
        cur = ctypes.create_string_buffer(key_size)
        nxt = ctypes.create_string_buffer(key_size)
        first = True
        while lib().bpf_map_get_next_key(self.fd, None if first else cur, nxt) == 0:
            first = False
            yield nxt.raw
            ctypes.memmove(cur, nxt, key_size)


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: (program's return value, frame after the program, ns per run)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 256)
    o = _TestRunOpts()
    o.sz = ctypes.sizeof(_TestRunOpts)
    o.data_in = ctypes.addressof(data_in)
    o.data_size_in = len(frame)
    o.data_out = ctypes.addressof(data_out)
    o.data_size_out = len(data_out)
    o.repeat = repeat
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(o)), "BPF_PROG_TEST_RUN")
    return o.retval, data_out.raw[: o.data_size_out], o.duration


class BpfObject:
    """An opened and loaded BPF object file; `close()` releases its programs and maps."""

    def __init__(
        self,
        path: str,
        max_entries: dict[str, int] | None = None,
        programs: tuple[str, ...] | None = None,
    ) -> None:
        L = lib()
        obj = L.bpf_object__open_file(path.encode(), None)
        if not obj:
            err = ctypes.get_errno() or 22
            raise BpfError(err, f"open {path}: {os.strerror(err)}; libbpf: {last_messages()}")
        self._obj: int | None = obj
        self._links: list[int] = []
        try:
            for name, n in (max_entries or {}).items():
                m = L.bpf_object__find_map_by_name(obj, name.encode())
                if not m:
                    raise BpfError(22, f"{path}: no map {name}")
                _check(L.bpf_map__set_max_entries(m, n), f"set_max_entries {name}")
            if programs is not None:
                for name in PROGRAMS:
                    p = L.bpf_object__find_program_by_name(obj, name.encode())
                    if p:
                        L.bpf_program__set_autoload(p, name in programs)
            _check(L.bpf_object__load(obj), f"load {os.path.basename(path)}")
        except BaseException:
            self.close()
            raise

    def map(self, name: str) -> Map:
        """A map by its C name."""
        m = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(22, f"no map {name}")
        return Map(name, _check(lib().bpf_map__fd(m), f"map fd {name}"))

    def _prog(self, name: str) -> int:
        p = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not p:
            raise BpfError(22, f"no program {name}")
        return p

    def prog_fd(self, name: str) -> int:
        """The fd of a loaded program (SO_ATTACH_BPF takes it)."""
        return _check(lib().bpf_program__fd(self._prog(name)), f"program fd {name}")

    def prog_id(self, name: str) -> int:
        """The kernel's id of a loaded program (what `bpftool prog show id N` takes)."""
        info = ctypes.create_string_buffer(256)
        size = ctypes.c_uint32(256)
        _check(lib().bpf_obj_get_info_by_fd(self.prog_fd(name), info, ctypes.byref(size)), "prog info")
        return int.from_bytes(info.raw[4:8], "little")  # struct bpf_prog_info: type, id, ...

    def attach_xdp(self, name: str, ifindex: int) -> None:
        """Attach a program to an interface through a BPF link (detached when we close or die)."""
        link = lib().bpf_program__attach_xdp(self._prog(name), ifindex)
        if not link:
            err = ctypes.get_errno() or 22
            raise BpfError(err, f"attach XDP to ifindex {ifindex}: {os.strerror(err)}; {last_messages(3)}")
        self._links.append(link)

    def attach(self, name: str) -> None:
        """Attach a program where its section says (a tracepoint), through a BPF link."""
        link = lib().bpf_program__attach(self._prog(name))
        if not link:
            err = ctypes.get_errno() or 22
            raise BpfError(err, f"attach {name}: {os.strerror(err)}; {last_messages(3)}")
        self._links.append(link)

    def close(self) -> None:
        """Detach links, free programs and maps."""
        L = lib()
        for link in self._links:
            L.bpf_link__destroy(link)
        self._links.clear()
        if self._obj:
            L.bpf_object__close(self._obj)
            self._obj = None
