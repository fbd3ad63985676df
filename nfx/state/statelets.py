"""Statelets (SLiM): what each mirrored packet did to an NF's state, as compact records, and their
replay onto a snapshot or onto another instance.

A packet the gate marks STATELET (a per-flow mark or a wildcard filter, so new flows too) writes
one record into its instance's `nfx_statelets` ringbuf: one statelet per entry the packet
created, changed or deleted, in the order the datapath made the changes (nfx.h has the format).
A statelet names the table, the entry's key, a bitmask of the fields it carries and their NEW
absolute values; creation carries every field (for NAT also the port allocation, for the IDS the
host counters and the port seen-set).

Replay (`apply`) is exact and idempotent. Values are absolute and deletions explicit. Within one
incarnation of an entry (created_ns, first_ns) counters only grow, flags only gain bits, and
pkts orders the rest: a statelet older than the entry it lands on changes nothing, so a
snapshot taken at any point after mirroring began, plus every statelet in ring order, gives
back the live per-flow and multi-flow state byte for byte, and applying a stream twice is
harmless. An entry torn by a concurrent snapshot read is repaired by the statelets at or after
its pkts. Timestamps are exact while one entry's updates are serialised (a flow's packets reach
one RX queue); counters (e.g. an IDS host's, updated by many flows on many CPUs) are exact
either way.

    reader = StateletReader(nf)          # nf may be reopened from pins in another process
    nf.set_filter(0, <match-all filter, action STATELET>)
    snap = Tables.from_nf(nf)            # or list(ops.export(nf, ("per-flow", "multi-flow")))
    ... traffic ...
    report = apply(snap, reader.drain())
    ops.diff(snap.chunks(), ops.export(nf, ("per-flow", "multi-flow")))["same"]
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
from ..loader.ring import RingReader
from . import ops, wire
from .tables import tables

HDR = struct.Struct("<BBBBI")          # struct nfx_statelet: table, op, nval, mask, inc
WORD = 8
RINGBUF_HDR = 8                        # the kernel's per-record header in the ring
STATE_SCOPES = ("per-flow", "multi-flow")


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
        s = SCHEMAS.get(table)
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
    s = SCHEMAS[u.table]
    key = u.key + bytes(WORD * s.nkey - len(u.key))
    return HDR.pack(u.table, u.op, len(u.vals), u.mask, u.inc) + key + struct.pack(f"<{len(u.vals)}Q", *u.vals)


def _flow_of(words) -> L.FlowKey:
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
    s = SCHEMAS[u.table]
    out, i = {}, 0
    for f in s.fields:
        if not u.mask >> f.bit & 1:
            continue
        w = u.vals[i:i + f.words]
        i += f.words
        out[f.name or "value"] = key_fields(_flow_of(w)) if f.flow else w[0]
    return out


def to_dict(u: Update, seq: int | None = None) -> dict:
    """JSON-friendly and lossless (key_hex; flow-key values as 5-tuples)."""
    s = SCHEMAS[u.table]
    d = {"table": s.name, "op": "set" if u.op == L.StOp.SET else "del", "key": _key_view(s, u.key),
         "key_hex": u.key.hex(), "mask": u.mask, "inc": u.inc, "fields": fields_of(u)}
    if seq is not None:
        d["seq"] = seq
    return d


def from_dict(d: dict) -> Update:
    s = BY_NAME.get(d.get("table"))
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
    records as bytes, for speed (replay them with apply()). One consumer per ring: a second
    reader competes for records."""

    def __init__(self, nf):
        m = nf.maps.nfx_statelets
        if m is None:
            raise NotFound(f"instance {getattr(nf, 'instance', '?')} has no statelet ring "
                           "(built before statelets, or its pins lack nfx_statelets)")
        self.nf = nf
        self.ring = RingReader(m.fd, what="statelet")
        self.seq = 0              # packet records seen (poll's dicts carry theirs)
        self.updates = 0          # statelets decoded by poll()

    @property
    def records(self) -> int:
        return self.ring.records

    @property
    def bytes(self) -> int:
        return self.ring.bytes

    def poll_raw(self, timeout_ms: int = 0) -> list[bytes]:
        recs = self.ring.poll_raw(timeout_ms)
        self.seq += len(recs)
        return recs

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
        return self.nf.stats().get("r_statelet_ring_full", 0)

    def close(self) -> None:
        self.ring.close()


# ---- replay targets -------------------------------------------------------------------------------
class Tables:
    """An NF's per-flow and multi-flow state as dicts (raw key -> value struct): a snapshot that
    statelets replay onto. Chunks of other tables (all-flows) pass through unchanged."""

    def __init__(self, kind: str):
        self.kind = kind
        self.data: dict[str, dict[bytes, object]] = {s.name: {} for s in SCHEMAS.values() if s.kind == kind}
        self.other: list[wire.Chunk] = []

    @classmethod
    def from_chunks(cls, chunks: Iterable[wire.Chunk], kind: str | None = None) -> "Tables":
        chunks = list(chunks)
        kind = kind or (chunks[0].kind if chunks else None)
        if kind is None:
            raise BadInput("no chunks and no NF kind: cannot tell which tables a snapshot holds")
        self = cls(kind)
        for c in chunks:
            s = BY_NAME.get(c.table)
            if c.kind != kind:
                raise BadInput(f"chunk of {c.kind} state in a {kind} snapshot")
            if s is None or s.kind != kind:
                self.other.append(c)
                continue
            if (c.key_size, c.value_size, c.ncpu) != (ct.sizeof(s.key), ct.sizeof(s.value), 1):
                raise BadInput(f"chunk of {c.table}: entries of {c.key_size}+{c.value_size}x{c.ncpu} "
                               f"bytes, statelets know {ct.sizeof(s.key)}+{ct.sizeof(s.value)}")
            d = self.data[c.table]
            kb, vb, ks, vs = bytes(c.keys), bytes(c.values), c.key_size, c.value_size
            for i in range(c.count):
                d[kb[i * ks:(i + 1) * ks]] = s.value.from_buffer_copy(vb, i * vs)
        return self

    @classmethod
    def from_nf(cls, nf, scopes=STATE_SCOPES) -> "Tables":
        return cls.from_chunks(ops.export(nf, scopes), nf.kind)

    def chunks(self) -> list[wire.Chunk]:
        layout = L.layout_hash(self.kind)
        out = []
        for name, d in self.data.items():
            s = BY_NAME[name]
            scope = next(t.scope for t in tables(self.kind) if t.name == name)
            keys = b"".join(d.keys())
            vals = b"".join(bytes(v) for v in d.values())
            out.append(wire.Chunk(name, scope, self.kind, len(d), ct.sizeof(s.key), ct.sizeof(s.value), 1,
                                  layout, keys, vals))
        out += self.other
        for i, c in enumerate(out):
            c.seq = i
        return out

    def entries(self) -> int:
        return sum(map(len, self.data.values()))

    # the store interface apply() uses
    def _get(self, s: Schema, key: bytes):
        return self.data[s.name].get(key)

    def _put(self, s: Schema, key: bytes, v) -> None:
        self.data[s.name][key] = v

    def _delete(self, s: Schema, key: bytes) -> bool:
        return self.data[s.name].pop(key, None) is not None

    def _flush(self) -> None:
        pass


class _MapStore:
    """Replay straight onto an instance's maps: entries are read once, changed in memory, and
    written back in batches (deletions one by one) at the end."""

    def __init__(self, nf):
        self.nf = nf
        self.over: dict[str, dict[bytes, object]] = {}
        self.existed: dict[str, set] = {}

    def _map(self, s: Schema):
        m = self.nf.maps.get(s.name)
        if m is None:
            raise NotFound(f"instance {getattr(self.nf, 'instance', '?')} has no map {s.name}")
        return m

    def _get(self, s: Schema, key: bytes):
        o = self.over.setdefault(s.name, {})
        if key in o:
            return o[key]
        v = self._map(s).get(s.key.from_buffer_copy(key))
        o[key] = v
        if v is not None:
            self.existed.setdefault(s.name, set()).add(key)
        return v

    def _put(self, s: Schema, key: bytes, v) -> None:
        self.over.setdefault(s.name, {})[key] = v

    def _delete(self, s: Schema, key: bytes) -> bool:
        had = self._get(s, key) is not None
        self.over[s.name][key] = None
        return had

    def _flush(self) -> None:
        for name, o in self.over.items():
            s = BY_NAME[name]
            m = self._map(s)
            for k in (k for k, v in o.items() if v is None and k in self.existed.get(name, ())):
                m.delete(s.key.from_buffer_copy(k))
            sets = [(k, v) for k, v in o.items() if v is not None]
            if sets:
                n = len(sets)
                ka = (s.key * n)(*(s.key.from_buffer_copy(k) for k, _ in sets))
                va = (s.value * n)(*(v.value if isinstance(v, ct._SimpleCData) else v for _, v in sets))
                m.update_batch(ka, va, n)
        self.over.clear()
        self.existed.clear()


# ---- replay ----------------------------------------------------------------------------------------
class _Plan(NamedTuple):
    setters: tuple           # (attribute or None, word index, flow, merge)
    inc: int                 # word index of the incarnation field, -1 if not carried
    order: int               # word index of the order field, -1 if not carried


_PLANS: dict[tuple[int, int], _Plan] = {}


def _plan(s: Schema, mask: int) -> _Plan:
    p = _PLANS.get((s.table, mask))
    if p is None:
        setters, idx, at = [], 0, {}
        for f in s.fields:
            if mask >> f.bit & 1:
                setters.append((f.name, idx, f.flow, f.merge))
                at[f.name] = idx
                idx += f.words
        p = _PLANS[(s.table, mask)] = _Plan(tuple(setters), at.get(s.incarnation, -1), at.get(s.order, -1))
    return p


def _word(s: Schema, flow: bool, vals: tuple, i: int):
    return _flow_of(vals[i:i + 2]) if flow else vals[i]


def _fresh(s: Schema, plan: _Plan, vals: tuple):
    """A value made from the carried fields alone (zeroes elsewhere)."""
    v = s.value() if s.fields[0].name else None
    for name, i, flow, merge in plan.setters:
        x = _word(s, flow, vals, i)
        if name is None:
            return x if flow else s.value(x)
        setattr(v, name, x)
    return v if v is not None else s.value()


def apply(target, statelets, report: dict | None = None) -> dict:
    """Replay statelets, in order, onto `target`: a Tables snapshot, a list of chunks (turned into
    Tables; report["tables"] holds the result), or an NF instance (its maps, written at the end).
    `statelets`: ring records (bytes, as StateletReader.poll_raw/drain return them), dicts (poll),
    or Updates.

    Per entry: a statelet of another incarnation than the entry's is skipped (a whole one of a
    later incarnation replaces the entry); within an incarnation counters take the larger value,
    flag sets are ORed, and the other fields (timestamps) are taken from a statelet whose pkts is
    not below the entry's. That is exact when one entry's updates are serialised, and counters
    stay exact when they are not (each CPU reads the counter after its own add, so the last add's
    value is the largest any statelet carries). A partial statelet for an entry the target lacks
    is skipped: fine if the stream later deletes that incarnation, else an orphan.

    Returns counts: applied, stale (older than the entry it met), deleted, absent_deletes,
    orphans (partial statelets whose entry the target never had: the stream or the snapshot is
    incomplete), statelets, records, apply_s."""
    if isinstance(target, (list, tuple)):
        target = Tables.from_chunks(target)
    store = target if isinstance(target, Tables) else _MapStore(target)
    kind = target.kind if isinstance(target, Tables) else getattr(target, "kind", None)
    r = report if report is not None else {}
    for k in ("applied", "stale", "deleted", "absent_deletes", "orphans", "statelets", "records"):
        r.setdefault(k, 0)
    t0 = time.perf_counter()
    records = statelets if isinstance(statelets, list) else list(statelets)
    r["records"] += sum(1 for x in records if isinstance(x, (bytes, bytearray, memoryview)))
    pending: dict[tuple[int, bytes], int] = {}    # partial statelets with no entry: (table, key) -> inc
    SET = L.StOp.SET
    for u in updates(records):
        r["statelets"] += 1
        s = SCHEMAS[u.table]
        if kind is not None and s.kind != kind:
            raise BadInput(f"a {s.kind} statelet ({s.name}) for a {kind} instance")
        cur = store._get(s, u.key)
        cur_inc = inc_tag(getattr(cur, s.incarnation)) if cur is not None and s.incarnation else 0
        if u.op != SET:
            if cur is None:
                r["absent_deletes"] += 1
                if pending.get((u.table, u.key)) == u.inc:
                    del pending[(u.table, u.key)]     # an incarnation that died: nothing to miss
            elif u.inc != cur_inc:
                r["stale"] += 1                   # another incarnation under the same key: keep it
            else:
                store._delete(s, u.key)
                r["deleted"] += 1
            continue
        plan = _plan(s, u.mask)
        vals = u.vals
        full = u.mask == s.full_mask
        if cur is None or s.fields[0].merge == WHOLE:
            if cur is None and not full:
                pending[(u.table, u.key)] = u.inc
                continue
            store._put(s, u.key, _fresh(s, plan, vals))
            r["applied"] += 1
            continue
        if u.inc != cur_inc:
            newer_inc = (vals[plan.inc] > getattr(cur, s.incarnation)) if plan.inc >= 0 else u.inc > cur_inc
            if newer_inc and full:                # a later incarnation, whole: it replaces the entry
                store._put(s, u.key, _fresh(s, plan, vals))
                r["applied"] += 1
            elif newer_inc:                       # a later incarnation whose creation we never saw
                pending[(u.table, u.key)] = u.inc
            else:
                r["stale"] += 1
            continue
        newer = plan.order < 0 or vals[plan.order] >= getattr(cur, s.order)
        for name, i, flow, merge in plan.setters:
            if merge == MAX:
                if vals[i] > getattr(cur, name):
                    setattr(cur, name, vals[i])
            elif merge == OR:
                setattr(cur, name, getattr(cur, name) | vals[i])
            elif newer:
                setattr(cur, name, _word(s, flow, vals, i))
        store._put(s, u.key, cur)
        r["applied" if newer else "stale"] += 1
    store._flush()
    r["orphans"] += len(pending)
    r["apply_s"] = r.get("apply_s", 0.0) + time.perf_counter() - t0
    if isinstance(store, Tables):
        r["tables"] = store
    return r


# ---- accounting ------------------------------------------------------------------------------------
def sigma(src, before: dict | None = None) -> dict:
    """The statelet factor from an instance's counters (an NF, or a stats dict from NF.stats()),
    since `before` (an earlier stats dict) if given: statelet bytes / bytes of the packets they
    mirror (whole frames). ring_bytes adds the ring's 8-byte header per record."""
    s = src.stats() if hasattr(src, "stats") else dict(src)
    b = before or {}

    def d(k):
        return s.get(k, 0) - b.get(k, 0)

    recs, sb, pb, drops = d("r_statelet"), d("r_statelet_bytes"), d("r_statelet_pkt_bytes"), d("r_statelet_ring_full")
    return {"records": recs, "statelet_bytes": sb, "packet_bytes": pb, "dropped": drops,
            "sigma": sb / pb if pb else 0.0, "ring_bytes": sb + RINGBUF_HDR * recs,
            "bytes_per_record": sb / recs if recs else 0.0}
