"""What a SLiM destination does with the state it receives (nfx/agent/slim_dest.py): install the
snapshot, replay the statelets, and merge where the destination already had an entry.

Per-flow entries are the moving flows' own: installed and replayed onto the maps. A multi-flow
entry the destination already had before the move is the merge case:
- an IDS host (ids_hosts): the source's values are kept aside (snapshot, then its statelets) and
  added to the destination's once the stream has ended: packets, bytes, flows and alerts add,
  the distinct ports add less those both had seen (ids_hostports), scan_alerted is ORed;
- an IDS (host, port) seen-mark (ids_hostports): seen by either is seen;
- a NAT public port (nat_ports) held by another connection: a collision, refused. nfx gives each
  instance of a testbed its own slice of the port range, so a merge never meets one.
The final add is one read-modify-write per merged host: a packet of the destination's own flows
of that host in those microseconds is not counted in the host's totals."""
import dataclasses
import itertools
import struct

from ..errors import BadInput
from ..state import ops, replay
from ..state.fastapply import StreamApplier
from ..state.replay_one import schema_of
from ..state.stbatch import parse_span
from ..state.statelets import BY_NAME, SCHEMAS, STATE_SCOPES, replayable, updates

MERGE_TABLES = ("ids_hosts", "ids_hostports", "nat_ports")
ADDED = ("ids_hosts", "ids_hostports")     # merged by adding the source's part; a NAT port is refused


class Merge:
    def __init__(self, nf, scopes, flt):
        bad = set(scopes) - set(STATE_SCOPES)
        if bad:
            raise BadInput("a SLiM move carries what statelets mirror: per-flow and multi-flow state "
                           f"({', '.join(sorted(bad))} is not mirrored: leave it out with --scopes per-flow,multi-flow)")
        self.nf, self.kind, self.scopes, self.flt = nf, nf.kind, tuple(scopes), flt
        self.aside = replay.Tables(self.kind)        # the source's values of entries merged later
        self.own: set[tuple[str, bytes]] = set()      # multi-flow entries this instance had before
        self.merged = 0
        self.sa = StreamApplier(nf)                  # the moving entries: this instance owns them

    def install(self, chunks: list) -> None:
        """The snapshot: per-flow entries as they are; multi-flow ones this instance already had
        set aside for the merge (a NAT port held here is refused)."""
        here = ops.index(ops.export(self.nf, ("multi-flow",)))
        # what is here now is this instance's own (a resync has removed what the last snapshot put)
        self.own = {(n, k) for n, k in here if n in ADDED}
        self.sa.install(self._set_aside(chunks, here))

    def _set_aside(self, chunks: list, here: dict) -> list:
        """The snapshot's chunks, checked, less the entries of a merged table this instance has
        (kept in `aside` for finish). A chunk with none of them goes in as it came: decoding
        every entry into a dict and back cost about 1 us an entry (2.5-3.6 ms for 3,000)."""
        out = []
        for c in chunks:
            s = schema_of(c, self.kind)
            if s is None:
                raise BadInput(f"a SLiM snapshot holds only per-flow and multi-flow state, not {c.table}")
            if c.table in MERGE_TABLES and here:
                c = self._without_own(c, s, here)
            c.seq = len(out)
            out.append(c)
        return out

    def _without_own(self, c, s, here: dict):
        ks, vs, kb, vb = c.key_size, c.value_size, bytes(c.keys), bytes(c.values)
        keep = []
        for i in range(c.count):
            k = kb[i * ks:(i + 1) * ks]
            if (c.table, k) not in here:
                keep.append(i)
            elif c.table == "nat_ports":
                raise BadInput(f"NAT public port {k.hex()} is in use here by another connection: the "
                               "instances' port ranges overlap (give each its own slice), nothing merged")
            else:
                self.aside.data[c.table][k] = s.value.from_buffer_copy(vb, i * vs)
        if len(keep) == c.count:
            return c
        return dataclasses.replace(c, count=len(keep), keys=b"".join(kb[i * ks:(i + 1) * ks] for i in keep),
                                   values=b"".join(vb[i * vs:(i + 1) * vs] for i in keep))

    def apply(self, buf: bytes, lens: list[int], report: dict) -> None:
        """Statelet records (back to back in buf, of lengths lens), in order; those of merged
        entries go to the aside copy."""
        n0 = report.get("statelets", 0)
        if not self.own:
            offs = list(itertools.accumulate(lens, initial=0))[:-1]
            self.sa.apply(parse_span(buf, offs, lens), report)
        else:
            direct, aside = [], []
            for u in replayable(updates([buf])):
                (aside if (SCHEMAS[u.table].name, u.key) in self.own else direct).append(u)
            self.sa.apply(direct, report)
            if aside:
                replay.apply(self.aside, aside, {})
        report["last_statelets"] = report.get("statelets", 0) - n0

    def forget(self) -> None:
        """A resync follows: what was installed of the filter goes, and the aside copy."""
        ops.delete(self.nf, ("per-flow",), self.flt)
        mine = replay.Tables.from_chunks(list(ops.export(self.nf, ("multi-flow",), self.flt)), self.kind)
        for name, d in mine.data.items():
            for k in [k for k in d if (name, k) in self.own]:
                del d[k]
        for c in mine.chunks():
            if c.count:
                ops.delete_chunk(self.nf, c)
        for d in self.aside.data.values():
            d.clear()
        self.sa = StreamApplier(self.nf)

    def finish(self) -> None:
        """The stream has ended: add the source's part of every merged entry to this instance's."""
        hosts = self.aside.data.get("ids_hosts") or {}
        ports = self.aside.data.get("ids_hostports") or {}
        if not hosts and not ports:
            return
        m_hosts = self.nf.maps.get("ids_hosts")
        # ports both had seen: counted once in the merged host's distinct ports
        both: dict[int, int] = {}
        for k in ports:
            saddr = struct.unpack_from("<I", k)[0]
            both[saddr] = both.get(saddr, 0) + 1
        for k, src in hosts.items():
            key = BY_NAME["ids_hosts"].key.from_buffer_copy(k)
            cur = m_hosts.get(key)
            if cur is None:
                m_hosts.put(key, src)
                continue
            saddr = struct.unpack_from("<I", k)[0]
            cur.pkts += src.pkts
            cur.bytes += src.bytes
            cur.flows += src.flows
            cur.alerts += src.alerts
            cur.dports += max(0, src.dports - both.get(saddr, 0))
            cur.scan_alerted |= src.scan_alerted
            m_hosts.put(key, cur)
            self.merged += 1
        self.merged += len(ports)

