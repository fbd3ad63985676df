"""The few bpf() commands nfx issues itself (BCC 0.26 lacks or mis-wraps them): pin, get-pinned,
object info, map element and batch operations, and BPF_PROG_TEST_RUN."""
import ctypes as ct
import os

from ..errors import BpfError

_libc = ct.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ct.c_long
SYS_BPF = 321

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
MAP_CREATE, PROG_LOAD = 0, 5
OBJ_PIN, OBJ_GET, PROG_TEST_RUN, OBJ_GET_INFO_BY_FD, BTF_LOAD, BTF_GET_FD_BY_ID = 6, 7, 10, 15, 18, 19
MAP_LOOKUP_BATCH, MAP_LOOKUP_AND_DELETE_BATCH, MAP_UPDATE_BATCH, MAP_DELETE_BATCH = 24, 25, 26, 27

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
F_TEST_XDP_LIVE_FRAMES = 1 << 1

MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 5, 6
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_DEVMAP, MAP_RINGBUF = 9, 10, 14, 27
PERCPU_TYPES = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH}


def _call(cmd: int, attr) -> int:
    r = _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if r < 0:
        e = ct.get_errno()
        raise OSError(e, os.strerror(e))
    return r


class _ObjAttr(ct.Structure):
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


def obj_pin(fd: int, path: str) -> None:
    p = ct.create_string_buffer(path.encode())
    a = _ObjAttr(pathname=ct.addressof(p), bpf_fd=fd)
    try:
        _call(OBJ_PIN, a)
    except OSError as e:
        raise BpfError(f"cannot pin to {path}: {e.strerror}") from None


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(path.encode())
    a = _ObjAttr(pathname=ct.addressof(p))
    try:
        return _call(OBJ_GET, a)
    except OSError as e:
        raise BpfError(f"cannot open pinned object {path}: {e.strerror}") from None


class MapInfo(ct.Structure):
    """struct bpf_map_info (uapi), up to map_extra."""
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
                ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64), ("btf_id", ct.c_uint32),
                ("btf_key_type_id", ct.c_uint32), ("btf_value_type_id", ct.c_uint32), ("_pad", ct.c_uint32),
                ("map_extra", ct.c_uint64), ("_rest", ct.c_uint8 * 16)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    a = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info))
    _call(OBJ_GET_INFO_BY_FD, a)
    return info


class _MapCreateAttr(ct.Structure):
    _fields_ = [("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
                ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
                ("numa_node", ct.c_uint32), ("map_name", ct.c_char * 16), ("map_ifindex", ct.c_uint32),
                ("btf_fd", ct.c_uint32), ("btf_key_type_id", ct.c_uint32), ("btf_value_type_id", ct.c_uint32),
                ("btf_vmlinux_value_type_id", ct.c_uint32), ("map_extra", ct.c_uint64)]


F_RDONLY_PROG, MAP_DEVMAP_HASH = 1 << 7, 25


def map_create(like: MapInfo, btf_fd: int = 0) -> int:
    """A new, empty map of the same kind as `like` (type, sizes, flags, name, and its BTF types
    when `btf_fd` holds them; without, none); returns its fd."""
    flags = like.map_flags
    if like.type in (MAP_DEVMAP, MAP_DEVMAP_HASH):
        flags &= ~F_RDONLY_PROG         # a devmap gets it from the kernel, which refuses it from us
    a = _MapCreateAttr(map_type=like.type, key_size=like.key_size, value_size=like.value_size,
                       max_entries=like.max_entries, map_flags=flags, map_name=like.name,
                       map_extra=like.map_extra)
    if like.btf_id and btf_fd:
        a.btf_fd, a.btf_key_type_id, a.btf_value_type_id = btf_fd, like.btf_key_type_id, like.btf_value_type_id
    try:
        return _call(MAP_CREATE, a)
    except OSError as e:
        raise BpfError(f"cannot create map {like.name.decode()}: {e.strerror}") from None


def btf_fd_by_id(btf_id: int) -> int:
    a = (ct.c_uint32 * 3)(btf_id, 0, 0)
    try:
        return _call(BTF_GET_FD_BY_ID, a)
    except OSError as e:
        raise BpfError(f"cannot open BTF object {btf_id}: {e.strerror}") from None


class _BtfInfo(ct.Structure):
    _fields_ = [("btf", ct.c_uint64), ("btf_size", ct.c_uint32), ("id", ct.c_uint32), ("name", ct.c_uint64),
                ("name_len", ct.c_uint32), ("kernel_btf", ct.c_uint32)]


def btf_data(fd: int) -> tuple[int, bytes]:
    """(id, raw BTF) of a BTF object: what btf_load() makes a like one of."""
    info = _BtfInfo()
    a = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info))
    _call(OBJ_GET_INFO_BY_FD, a)
    buf = ct.create_string_buffer(info.btf_size)
    info2 = _BtfInfo(btf=ct.addressof(buf), btf_size=info.btf_size)
    a = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info2), info=ct.addressof(info2))
    _call(OBJ_GET_INFO_BY_FD, a)
    return info.id, buf.raw[:info2.btf_size]


class _BtfLoadAttr(ct.Structure):
    _fields_ = [("btf", ct.c_uint64), ("btf_log_buf", ct.c_uint64), ("btf_size", ct.c_uint32),
                ("btf_log_size", ct.c_uint32), ("btf_log_level", ct.c_uint32)]


def btf_load(data: bytes) -> int:
    """A BTF object from raw BTF (btf_data); its fd."""
    buf = ct.create_string_buffer(data, len(data))
    a = _BtfLoadAttr(btf=ct.addressof(buf), btf_size=len(data))
    try:
        return _call(BTF_LOAD, a)
    except OSError as e:
        raise BpfError(f"cannot load BTF ({len(data)} bytes): {e.strerror}") from None


PROG_TYPES = {"xdp": 6, "tc": 3}        # BPF_PROG_TYPE_XDP, BPF_PROG_TYPE_SCHED_CLS
PROG_SYSCALL, F_SLEEPABLE = 31, 1 << 4  # BPF_PROG_TYPE_SYSCALL (the kernel has it sleepable only)


class _ProgLoadAttr(ct.Structure):
    _fields_ = [("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
                ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
                ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
                ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32),
                ("expected_attach_type", ct.c_uint32)]


def prog_load(prog_type: int, insns: bytes, name: str, license: bytes, kern_version: int = 0,
              flags: int = 0) -> int:
    """Load raw instructions (map fds already in them); on a rejection the verifier's log is in the error."""
    buf = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(license)
    a = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ct.addressof(buf),
                      license=ct.addressof(lic), kern_version=kern_version, prog_flags=flags,
                      prog_name=name.encode()[:15])
    try:
        return _call(PROG_LOAD, a)
    except OSError:
        pass
    log = ct.create_string_buffer(1 << 20)      # again, to say why
    a.log_level, a.log_size, a.log_buf = 1, len(log), ct.addressof(log)
    try:
        return _call(PROG_LOAD, a)
    except OSError as e:
        raise BpfError(f"cannot load {name}: {e.strerror}\n{log.value.decode(errors='replace')[-6000:]}") from None


class _ElemAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("_pad", ct.c_uint32), ("key", ct.c_uint64),
                ("value", ct.c_uint64), ("flags", ct.c_uint64)]


def map_elem(cmd: int, fd: int, key, value=None, flags: int = 0) -> int:
    """One element op; returns 0 or the errno (ENOENT on a miss)."""
    a = _ElemAttr(map_fd=fd, key=ct.addressof(key) if key is not None else 0,
                  value=ct.addressof(value) if value is not None else 0, flags=flags)
    try:
        _call(cmd, a)
        return 0
    except OSError as e:
        return e.errno


def map_lookup_many(fd: int, keys_addr: int, key_size: int, n: int, out_addr: int, slot_size: int) -> list[int]:
    """Look up n keys laid out back to back, each value into its place in the out buffer; returns
    the indices found. One attr, one syscall a key (the kernel has no batch lookup by key): about
    2 us a key here, against a whole table's batch walk (every bucket of a 262k-entry map) for a
    few of its entries."""
    a = _ElemAttr(map_fd=fd)
    ref, size, call = ct.byref(a), ct.sizeof(a), _libc.syscall
    found = []
    for i in range(n):
        a.key, a.value = keys_addr + i * key_size, out_addr + i * slot_size
        if call(SYS_BPF, MAP_LOOKUP_ELEM, ref, size) == 0:
            found.append(i)
    return found


class _BatchAttr(ct.Structure):
    _fields_ = [("in_batch", ct.c_uint64), ("out_batch", ct.c_uint64), ("keys", ct.c_uint64),
                ("values", ct.c_uint64), ("count", ct.c_uint32), ("map_fd", ct.c_uint32),
                ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


def map_batch(cmd: int, fd: int, keys_addr: int, values_addr: int, count: int,
              in_batch=None, out_batch=None, elem_flags: int = 0) -> tuple[int, int]:
    """One batch op; returns (entries processed, errno or 0)."""
    a = _BatchAttr(in_batch=ct.addressof(in_batch) if in_batch is not None else 0,
                   out_batch=ct.addressof(out_batch) if out_batch is not None else 0,
                   keys=keys_addr, values=values_addr, count=count, map_fd=fd, elem_flags=elem_flags)
    try:
        _call(cmd, a)
        return a.count, 0
    except OSError as e:
        return a.count, e.errno


class _TestRunAttr(ct.Structure):
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32),
                ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
                ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32),
                ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
                ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64),
                ("flags", ct.c_uint32), ("cpu", ct.c_uint32),
                ("batch_size", ct.c_uint32), ("_pad", ct.c_uint32)]


class XdpMd(ct.Structure):
    _fields_ = [("data", ct.c_uint32), ("data_end", ct.c_uint32), ("data_meta", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("rx_queue_index", ct.c_uint32),
                ("egress_ifindex", ct.c_uint32)]



def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1, live: bool = False,
                  ingress_ifindex: int = 0, meta: bytes = b"", batch_size: int = 0) -> tuple[int, bytes | None, int]:
    """Run an XDP program on `frame`. Plain mode returns (verdict, output frame, ns per run);
    live mode really transmits (repeat frames) and returns (verdict, None, duration)."""
    data = meta + frame
    inbuf = ct.create_string_buffer(data, len(data))
    a = _TestRunAttr(prog_fd=prog_fd, data_in=ct.addressof(inbuf), data_size_in=len(data), repeat=repeat)
    out = None
    if not live:
        out = ct.create_string_buffer(len(data) + 4096)
        a.data_out = ct.addressof(out)
        a.data_size_out = len(out)
    ctx = None
    if live or ingress_ifindex or meta:
        ctx = XdpMd(data=len(meta), data_end=len(data), ingress_ifindex=ingress_ifindex)
        a.ctx_in = ct.addressof(ctx)
        a.ctx_size_in = ct.sizeof(ctx)
    if live:
        a.flags = F_TEST_XDP_LIVE_FRAMES
        a.batch_size = batch_size
    try:
        _call(PROG_TEST_RUN, a)
    except OSError as e:
        err = BpfError(f"BPF_PROG_TEST_RUN failed: {e.strerror}")
        err.errno = e.errno             # EINTR: a signal cut a live run short (what went, went)
        raise err from None
    frame_out = None
    if out is not None:
        # the output starts at data_meta; drop the metadata we put in front
        frame_out = out.raw[len(meta):a.data_size_out]
    return a.retval, frame_out, a.duration


def prog_run_ctx(prog_fd: int, ctx) -> int:
    """Run a syscall program once on `ctx` (a ctypes object), which the kernel copies in and back
    into the same object; returns the program's return value."""
    a = _TestRunAttr(prog_fd=prog_fd, ctx_in=ct.addressof(ctx), ctx_size_in=ct.sizeof(ctx))
    try:
        _call(PROG_TEST_RUN, a)
    except OSError as e:
        raise BpfError(f"BPF_PROG_TEST_RUN (syscall) failed: {e.strerror}") from None
    return a.retval


class SkBuff(ct.Structure):
    """struct __sk_buff (uapi). Test-run accepts only mark, priority, ingress_ifindex, ifindex,
    cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp; every other field must stay 0."""
    _fields_ = [("len", ct.c_uint32), ("pkt_type", ct.c_uint32), ("mark", ct.c_uint32),
                ("queue_mapping", ct.c_uint32), ("protocol", ct.c_uint32), ("vlan_present", ct.c_uint32),
                ("vlan_tci", ct.c_uint32), ("vlan_proto", ct.c_uint32), ("priority", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("ifindex", ct.c_uint32), ("tc_index", ct.c_uint32),
                ("cb", ct.c_uint32 * 5), ("hash", ct.c_uint32), ("tc_classid", ct.c_uint32),
                ("data", ct.c_uint32), ("data_end", ct.c_uint32), ("napi_id", ct.c_uint32),
                ("family", ct.c_uint32), ("remote_ip4", ct.c_uint32), ("local_ip4", ct.c_uint32),
                ("remote_ip6", ct.c_uint32 * 4), ("local_ip6", ct.c_uint32 * 4),
                ("remote_port", ct.c_uint32), ("local_port", ct.c_uint32), ("data_meta", ct.c_uint32),
                ("flow_keys", ct.c_uint64), ("tstamp", ct.c_uint64), ("wire_len", ct.c_uint32),
                ("gso_segs", ct.c_uint32), ("sk", ct.c_uint64), ("gso_size", ct.c_uint32),
                ("tstamp_type", ct.c_uint8), ("_pad", ct.c_uint8 * 3), ("hwtstamp", ct.c_uint64)]


def prog_test_run_skb(prog_fd: int, frame: bytes, ingress_ifindex: int = 0, ifindex: int = 0,
                      repeat: int = 1) -> tuple[int, bytes, int]:
    """Run a tc (SCHED_CLS) program on `frame` (from the ethernet header) as an skb; returns
    (TC_ACT_* verdict, output frame, ns per run). bpf_redirect only sets the verdict here;
    bpf_clone_redirect really transmits, on `ifindex` of the caller's netns (0: loopback)."""
    inbuf = ct.create_string_buffer(frame, len(frame))
    out = ct.create_string_buffer(len(frame) + 4096)
    ctx = SkBuff(ingress_ifindex=ingress_ifindex, ifindex=ifindex)
    a = _TestRunAttr(prog_fd=prog_fd, data_in=ct.addressof(inbuf), data_size_in=len(frame),
                     data_out=ct.addressof(out), data_size_out=len(out), repeat=repeat,
                     ctx_in=ct.addressof(ctx), ctx_size_in=ct.sizeof(ctx))
    try:
        _call(PROG_TEST_RUN, a)
    except OSError as e:
        err = BpfError(f"BPF_PROG_TEST_RUN (skb) failed: {e.strerror}")
        err.errno = e.errno             # EINTR: a signal cut a repeated run short
        raise err from None
    return a.retval, out.raw[:a.data_size_out], a.duration


def possible_cpus() -> int:
    txt = open("/sys/devices/system/cpu/possible").read().strip()
    n = 0
    for part in txt.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info (uapi), up to the fields nfx reads; the rest stays 0."""
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32),
                ("map_ids", ct.c_uint64), ("name", ct.c_char * 16), ("ifindex", ct.c_uint32),
                ("flags", ct.c_uint32), ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64),
                ("_rest", ct.c_uint8 * 160)]


def prog_info(fd: int) -> tuple[ProgInfo, list[int]]:
    """A program's info and the ids of the maps it uses."""
    ids = (ct.c_uint32 * 256)()
    info = ProgInfo(nr_map_ids=len(ids), map_ids=ct.addressof(ids))
    a = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info))
    try:
        _call(OBJ_GET_INFO_BY_FD, a)
    except OSError as e:
        raise BpfError(f"cannot read program info: {e.strerror}") from None
    return info, list(ids[:min(info.nr_map_ids, len(ids))])


def fd_kind(fd: int) -> str:
    """'map', 'prog', 'link' or '' for a bpf fd (from /proc/self/fdinfo)."""
    try:
        txt = open(f"/proc/self/fdinfo/{fd}").read()
    except OSError:
        return ""
    for kind, tag in (("map", "map_type:"), ("prog", "prog_type:"), ("link", "link_type:")):
        if tag in txt:
            return kind
    return ""


def map_info_path(path: str) -> MapInfo:
    """map_info of a pinned map, without keeping it open."""
    fd = obj_get(path)
    try:
        return map_info(fd)
    finally:
        os.close(fd)


# ---- program run time (BPF_ENABLE_STATS; struct bpf_prog_info's run_time_ns/run_cnt) ----
ENABLE_STATS, STATS_RUN_TIME = 32, 0
_RUN_TIME_AT = 192          # offsetof(struct bpf_prog_info, run_time_ns); run_cnt follows


def enable_run_stats() -> int:
    """Turn the kernel's per-program run time accounting on for as long as the returned fd is
    open (BPF_ENABLE_STATS; it costs two clock reads per program run, so only while wanted).
    OSError if the kernel refuses (too old, or no CAP_SYS_ADMIN)."""
    return _call(ENABLE_STATS, ct.c_uint32(STATS_RUN_TIME))


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program: totals counted while run stats were on (0, 0 if never)."""
    buf = (ct.c_uint8 * (_RUN_TIME_AT + 16))()
    a = _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(buf), info=ct.addressof(buf))
    try:
        _call(OBJ_GET_INFO_BY_FD, a)
    except OSError as e:
        raise BpfError(f"cannot read program info: {e.strerror}") from None
    if a.info_len < _RUN_TIME_AT + 16:       # a kernel whose prog info ends before run_cnt
        return 0, 0
    run_ns, cnt = ct.c_uint64.from_buffer(buf, _RUN_TIME_AT).value, ct.c_uint64.from_buffer(buf, _RUN_TIME_AT + 8).value
    return run_ns, cnt
