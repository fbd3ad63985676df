"""Statelets (SLiM): what each mirrored packet did to an NF's state, as compact records (their
schema, parsing and encoding) and the reader of an instance's statelet ring. Their replay onto a
snapshot or onto another instance is nfx/state/replay.py.

A packet the gate marks STATELET (a per-flow mark or a wildcard filter, so new flows too) writes
one record into its instance's `nfx_statelets` ringbuf: one statelet per entry the packet
created, changed or deleted, in the order the datapath made the changes (bpf/include/nfx_statelet.h
has the format). A statelet names the table, the entry's key, a bitmask of the fields it carries
and their NEW absolute values; creation carries every field (for NAT also the port allocation,
for the IDS the host counters and the port seen-set).

A record may start with a STAMP statelet (table 7, no map): the packet's flow key and the
stamper's count it came with (0: none). The NF writes one in front of every record while its
gate shares state (Gate.set_share: then every processed packet writes one), and in front of
every stamped packet's; stamp_of() reads it, and replay skips it.
"""
import ctypes as ct
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .. import layout as L
from ..closing import Closing
from ..errors import BadInput, NotFound
from ..flows import be_to_ip, be_to_port, key_fields, make_key
from ..loader.ringmap import MmapRing
from .tables import tables

HDR = struct.Struct("<BBBBI")          # struct nfx_statelet: table, op, nval, mask, inc
WORD = 8
RINGBUF_HDR = 8                        # the kernel's per-record header in the ring
STATE_SCOPES = ("per-flow", "multi-flow")
# the NF's counters of mirrored packets whose record it could not write (nfx_st_write.h)
LOST_REASONS = ("r_statelet_ring_full", "r_statelet_too_big")


def lost(stats: dict) -> int:
    """Statelet records an instance could not write, from its stats (NF.stats())."""
    return sum(stats.get(k, 0) for k in LOST_REASONS)


# ---- the schema: which map each table id names, and its fields' bits ------------------------------
# how a carried field merges into the entry it lands on (same incarnation)
MAX, OR, NEWER, WHOLE = "max", "or", "newer", "whole"


@dataclass(frozen=True)
class Field:
    name: str | None       # attribute of the value struct; None: the whole value
    bit: int
    words: int             # 2 for a flow key, else 1
    flow: bool             # a flow key (NAT peer, port owner)
    merge: str             # MAX: a counter; OR: a flag set; NEWER: taken from a statelet not older
                           # than the entry (by `order`); WHOLE: the value, replaced


@dataclass(frozen=True)
class Schema:
    table: int             # L.StTable
    name: str              # the map
    kind: str              # the NF kind it belongs to
    key: type
    value: type
    nkey: int              # key words
    fields: tuple          # Field, by bit
    incarnation: str | None    # the field that tells a re-created entry from its predecessor
    order: str | None          # the counter that orders one incarnation's states (pkts)

    @property
    def full_mask(self) -> int:
        return (1 << len(self.fields)) - 1


def _fields(stf, value, counters, ors=("tcp_flags",)) -> tuple:
    types = dict(value._fields_)
    out = []
    for m in sorted(stf):
        name = m.name.lower()
        flow = types[name] is L.FlowKey
        merge = MAX if name in counters else OR if name in ors else NEWER
        out.append(Field(name, int(m), 2 if flow else 1, flow, merge))
    return tuple(out)


def _schemas() -> dict[int, Schema]:
    by_name = {t.name: t for kind in ("nat", "ids") for t in tables(kind)}
    whole_flow = (Field(None, L.STF_VALUE, 2, True, WHOLE),)
    whole_word = (Field(None, L.STF_VALUE, 1, False, WHOLE),)
    nat = _fields(L.StfNat, L.NatEntry, ("pkts", "bytes"))
    spec = [
        (L.StTable.NAT_FWD, "nat_fwd", "nat", 2, nat, "created_ns", "pkts"),
        (L.StTable.NAT_REV, "nat_rev", "nat", 2, nat, "created_ns", "pkts"),
        (L.StTable.NAT_PORTS, "nat_ports", "nat", 1, whole_flow, None, None),
        (L.StTable.IDS_FLOWS, "ids_flows", "ids", 2,
         _fields(L.StfIdsFlow, L.IdsFlow, ("pkts", "bytes", "sig_hits")), "first_ns", "pkts"),
        (L.StTable.IDS_HOSTS, "ids_hosts", "ids", 1,
         _fields(L.StfIdsHost, L.IdsHost, ("pkts", "bytes", "flows", "dports", "alerts", "scan_alerted")),
         None, "pkts"),
        (L.StTable.IDS_HOSTPORTS, "ids_hostports", "ids", 1, whole_word, None, None),
    ]
    out = {}
    for tid, name, kind, nkey, fields, inc, order in spec:
        t = by_name[name]
        out[int(tid)] = Schema(int(tid), name, kind, t.key, t.value, nkey, fields, inc, order)
    return out


SCHEMAS = _schemas()
BY_NAME = {s.name: s for s in SCHEMAS.values()}
# the STAMP statelet names no map: kept out of SCHEMAS (what replay walks), parsed like the rest
STAMP = Schema(int(L.StTable.STAMP), "stamp", "stamp", L.FlowKey, L.u64, 2,
               (Field(None, L.STF_VALUE, 1, False, WHOLE),), None, None)
ANY = {**SCHEMAS, STAMP.table: STAMP}
ANY_BY_NAME = {s.name: s for s in ANY.values()}


# ---- records -------------------------------------------------------------------------------------
class Update(NamedTuple):
    """One entry's statelet, parsed: raw key bytes (the map key's size), the value words, and the
    entry's incarnation tag (0 for tables without incarnations)."""
    table: int
    op: int
    key: bytes
    mask: int
    vals: tuple
    inc: int = 0


def inc_tag(ns: int) -> int:
    """The incarnation tag a statelet carries for an entry created at `ns`."""
    return (ns >> L.STATELET_INC_SHIFT) & 0xFFFFFFFF


_WORDS_CACHE: dict[tuple[int, int], int] = {}


def _value_words(s: Schema, mask: int) -> int:
    n = _WORDS_CACHE.get((s.table, mask))
    if n is None:
        n = _WORDS_CACHE[(s.table, mask)] = sum(f.words for f in s.fields if mask >> f.bit & 1)
    return n


def parse_record(buf) -> list[Update]:
    """A ring record (one packet's statelets) as Updates, in order. BadInput if malformed."""
    mv = memoryview(buf).cast("B")
    out, off, n = [], 0, len(mv)
    if n % WORD:
        raise BadInput(f"statelet record of {n} bytes is not whole 8-byte words")
    while off < n:
        table, op, nval, mask, inc = HDR.unpack_from(mv, off)
        s = ANY.get(table)
        end = off + WORD * (1 + (s.nkey if s else 0) + nval)
        if s is None or op not in (L.StOp.SET, L.StOp.DEL) or end > n or nval != _value_words(s, mask) or \
                (op == L.StOp.DEL and mask) or (not s.incarnation and inc):
            raise BadInput(f"malformed statelet at byte {off}: table {table} op {op} nval {nval} "
                           f"mask {mask:#x} inc {inc} in a record of {n} bytes")
        k0 = off + WORD
        key = bytes(mv[k0:k0 + ct.sizeof(s.key)])
        vals = struct.unpack_from(f"<{nval}Q", mv, k0 + WORD * s.nkey) if nval else ()
        out.append(Update(table, op, key, mask, vals, inc))
        off = end
    return out


def encode(u: Update) -> bytes:
    """The wire form of one Update (inverse of parse_record for a single statelet)."""
    s = ANY[u.table]
    key = u.key + bytes(WORD * s.nkey - len(u.key))
    return HDR.pack(u.table, u.op, len(u.vals), u.mask, u.inc) + key + struct.pack(f"<{len(u.vals)}Q", *u.vals)


def flow_of(words) -> L.FlowKey:
    return L.FlowKey.from_buffer_copy(struct.pack("<QQ", *words))


def _key_view(s: Schema, key: bytes):
    k = s.key.from_buffer_copy(key)
    if s.key is L.FlowKey:
        return key_fields(k)
    if s.key is L.u32:
        return be_to_ip(k.value)
    if s.key is L.NatPort:
        return {"addr": be_to_ip(k.addr), "port": be_to_port(k.port), "proto": k.proto}
    if s.key is L.IdsHostPort:
        return {"addr": be_to_ip(k.saddr), "dport": be_to_port(k.dport), "proto": k.proto, "token": bool(k.pad)}
    return key.hex()


def fields_of(u: Update) -> dict:
    """The values an Update carries, by field name (`value` for a whole value); flow keys as dicts."""
    s = ANY[u.table]
    out, i = {}, 0
    for f in s.fields:
        if not u.mask >> f.bit & 1:
            continue
        w = u.vals[i:i + f.words]
        i += f.words
        out[f.name or "value"] = key_fields(flow_of(w)) if f.flow else w[0]
    return out


def to_dict(u: Update, seq: int | None = None) -> dict:
    """JSON-friendly and lossless (key_hex; flow-key values as 5-tuples)."""
    s = ANY[u.table]
    d = {"table": s.name, "op": "set" if u.op == L.StOp.SET else "del", "key": _key_view(s, u.key),
         "key_hex": u.key.hex(), "mask": u.mask, "inc": u.inc, "fields": fields_of(u)}
    if seq is not None:
        d["seq"] = seq
    return d


def from_dict(d: dict) -> Update:
    s = ANY_BY_NAME.get(d.get("table"))
    if s is None:
        raise BadInput(f"statelet for unknown table {d.get('table')!r}")
    op = {"set": L.StOp.SET, "del": L.StOp.DEL}.get(d.get("op"))
    if op is None:
        raise BadInput(f"statelet op must be set or del, not {d.get('op')!r}")
    key = bytes.fromhex(d["key_hex"])
    if len(key) != ct.sizeof(s.key):
        raise BadInput(f"statelet key of {len(key)} bytes for {s.name} (keys are {ct.sizeof(s.key)})")
    mask, vals, fields = int(d.get("mask", 0)), [], d.get("fields", {})
    for f in s.fields:
        if not mask >> f.bit & 1:
            continue
        v = fields[f.name or "value"]
        if f.flow:
            k = make_key(v["src"], v["dst"], v["sport"], v["dport"], v["proto"])
            vals += struct.unpack("<QQ", bytes(k))
        else:
            vals.append(int(v))
    return Update(s.table, int(op), key, mask, tuple(vals), int(d.get("inc", 0)))


def entry_update(s: Schema, key: bytes, v) -> Update:
    """The full-mask SET statelet of entry key -> v (a value struct, or a whole value) of table
    `s`: what creation writes, and what a shared boundary carries (every field, absolute)."""
    vals = []
    for f in s.fields:
        x = v if f.name is None else getattr(v, f.name)
        if f.flow:
            vals += struct.unpack("<QQ", bytes(x))
        else:
            vals.append(int(x.value if isinstance(x, ct._SimpleCData) else x))
    inc = inc_tag(getattr(v, s.incarnation)) if s.incarnation else 0
    return Update(s.table, int(L.StOp.SET), bytes(key), s.full_mask, tuple(vals), inc)


def stamp_of(ups) -> tuple[bytes, int] | None:
    """(flow key bytes, stamp) of one packet's record (its Updates, or the record's bytes): what
    its leading STAMP statelet says, or None when it has none (stamp 0: the packet came unstamped)."""
    if isinstance(ups, (bytes, bytearray, memoryview)):
        ups = parse_record(ups)
    for u in ups:
        if u.table == STAMP.table:
            return u.key, u.vals[0]
        return None
    return None


def replayable(ups) -> Iterable[Update]:
    """Updates without the STAMP statelets (which name no map), for replay."""
    return (u for u in ups if u.table != STAMP.table)


def updates(statelets) -> Iterable[Update]:
    """Updates from ring records (bytes), Updates, or dicts, in order."""
    for x in statelets:
        if isinstance(x, Update):
            yield x
        elif isinstance(x, (bytes, bytearray, memoryview)):
            yield from parse_record(x)
        elif isinstance(x, dict):
            yield from_dict(x)
        else:
            raise BadInput(f"not a statelet: {type(x).__name__}")


# ---- the reader ----------------------------------------------------------------------------------
class StateletReader(Closing):
    """The consumer of one instance's statelet ring (its own maps or reopened from pins, any
    process). poll() gives one dict per statelet (the agent's stream); poll_raw() the packets'
    records as bytes, for speed (replay them with apply()); poll_span() them for stbatch.poll_batch to parse in bulk
    (nfx/state/stbatch.py), fastest. The ring is read from its mmapped pages in bulk
    (nfx/loader/ringmap.py). One consumer per ring: a second reader competes for records."""

    def __init__(self, nf):
        m = nf.maps.nfx_statelets
        if m is None:
            raise NotFound(f"instance {getattr(nf, 'instance', '?')} has no statelet ring "
                           "(built before statelets, or its pins lack nfx_statelets)")
        self.nf = nf
        self.ring = MmapRing(m.fd, what="statelet")
        self.seq = 0              # packet records seen (poll's dicts carry theirs)
        self.updates = 0          # statelets decoded by poll()

    @property
    def records(self) -> int:
        return self.ring.records

    @property
    def bytes(self) -> int:
        return self.ring.bytes

    def poll_raw(self, timeout_ms: int = 0) -> list[bytes]:
        recs = self.ring.take_raw(timeout_ms)
        self.seq += len(recs)
        return recs

    def poll_span(self, timeout_ms: int = 0, max_bytes: int = 0) -> tuple:
        """The records that arrived, as one buffer and their offsets and lengths in it (what
        stbatch.poll_batch parses in bulk)."""
        buf, offs, lens = self.ring.take(timeout_ms, max_bytes)
        self.seq += len(offs)
        return buf, offs, lens

    def poll(self, timeout_ms: int = 0) -> list[dict]:
        seq0 = self.seq
        out = []
        for i, rec in enumerate(self.poll_raw(timeout_ms)):
            out += [to_dict(u, seq0 + i) for u in parse_record(rec)]
        self.updates += len(out)
        return out

    def drain(self, idle_ms: int = 100, timeout_s: float = 30.0) -> list[bytes]:
        """Raw records until the ring stays empty for idle_ms (or timeout_s passes)."""
        out, t_end = [], time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            got = self.poll_raw(idle_ms)
            if not got:
                break
            out += got
        return out

    def dropped(self) -> int:
        """Records the instance could not write (ring full), since it was loaded."""
        return lost(self.nf.stats())

    def close(self) -> None:
        self.ring.close()
