"""The agent's cluster ops (issue 13): batched sharing and the replicas it feeds.

    share_start {members, batch, idle_ms,   the gate's share flag on; this instance's state as a
                 etcd, cluster, ttl_s,      base to every member; then the sharer (sharer.py,
                 send_ms}                   its batches out every send_ms);
                                            with etcd: membership under this agent's lease (of
                                            ttl_s), and
                                            its counters published there
    share_stop                              the flag off, the sharer's last batches out, the
                                            membership ended
    share_status                            what the sharer sent, what the replicas hold
    share_drop {member}                     stop sharing with a member that failed, at once
    share_put {src, blob | base | add}      from a member: its batches (coalesce.py), its base
                                            (wire chunks), or state a put wrote there, into this
                                            instance's replicas
    share_flush                             a move inside the cluster: every pending batch out now
    replica_promote {src, filter, scopes}   a move inside the cluster, at its destination: the
                                            moved flows' replicas (src's last batch already in)
                                            written into the maps, as a put writes them
A ring has one reader: while this instance shares, a SLiM move from it and `nfx inspect`'s
statelet stream are refused."""
import time

from ..errors import BadInput, NfxError
from ..etcd import Etcd
from ..etcd.globalstate import GlobalState
from ..filter import parse
from ..gate import Gate
from ..packets import flow_keys, keys_blob, keys_from_blob
from ..state import ops
from ..state.replicas import Replicas, blob_pieces, chunks_blob
from ..state.statelets import StateletReader
from .global_counters import COUNTER_TABLES, publish_instance_counters
from .ops_move import _b64, enc
from .transport import arg_int
from .settle import settle
from .sharer import SEND_EVERY_S, Sharer

SHARE_OPS = ("share_start", "share_stop", "share_status", "share_put", "share_flush", "replica_promote", "share_drop")
BASE_SCOPES = ("per-flow", "multi-flow")
PIECE_BYTES = 512 << 10    # state per share_put request (a request stops at 1 MiB; base64 adds a third)
MEMBER_TTL_S = 10          # a member whose agent is gone leaves etcd within this (failover's backstop)


class ShareOps:
    """Mixed into the agent (nfx/agent/server.py); needs the instance (instance.py)."""
    sharer: Sharer | None = None
    global_state: GlobalState | None = None
    _replicas: Replicas | None = None

    @property
    def replicas(self) -> Replicas:
        if self._replicas is None:
            self._replicas = Replicas(self.kind)
        return self._replicas

    def op_share_start(self, sock, r, req) -> dict:
        members = req.get("members")
        batch = arg_int(req, "batch", 30, 1, 1 << 20)
        idle_ms = req.get("idle_ms", 200)
        send_ms = req.get("send_ms", SEND_EVERY_S * 1e3)
        if isinstance(send_ms, bool) or not isinstance(send_ms, (int, float)) or not 0 <= send_ms <= 1000:
            raise BadInput(f"share_start: send_ms is 0..1000, not {send_ms!r}")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or self.instance in members:
            raise BadInput("share_start needs members: the other instances of the cluster (names)")
        if isinstance(idle_ms, bool) or not isinstance(idle_ms, (int, float)) or not 1 <= idle_ms <= 600_000:
            raise BadInput(f"share_start: idle_ms is 1..600000, not {idle_ms!r}")
        if self.sharer is not None:
            raise BadInput(f"{self.instance} already shares with {', '.join(self.sharer.members)}: share_stop first")
        if getattr(self, "session", None) is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is in progress here")
        hub = getattr(self, "hubs", {}).get("statelets")
        if hub is not None and hub.subs:
            raise BadInput(f"{self.instance}'s statelets are being watched (nfx inspect): the ring has one reader")
        etcd, cluster = req.get("etcd"), req.get("cluster")
        gs = None
        if etcd is not None:
            if not isinstance(etcd, str) or not isinstance(cluster, str):
                raise BadInput("share_start: etcd is a URL and cluster the cluster's name")
            gs = GlobalState(Etcd(etcd), self.testbed)
            gs.join(cluster, self.instance, ttl_s=arg_int(req, "ttl_s", MEMBER_TTL_S, 1, 3600), mgmt=self.addr)
        try:
            return self._share_start(members, batch, idle_ms, gs, send_ms)
        except BaseException:
            if gs is not None:
                gs.close()
            raise

    def _share_start(self, members, batch, idle_ms, gs, send_ms) -> dict:
        reader = StateletReader(self.nf)
        reader.drain(idle_ms=0, timeout_s=1.0)          # records of no one's (an earlier move's) go
        Gate(self.nf).set_share(True, batch)
        try:
            settle(self.nf, time.perf_counter())
            # the base is read after mirroring began: replaying the ring onto it is exact
            t0 = time.perf_counter()
            chunks = list(ops.export(self.nf, BASE_SCOPES))
            pieces = blob_pieces(chunks, PIECE_BYTES)
            publish = (lambda: publish_instance_counters(gs, self.testbed, self.instance, self.nf)) \
                if gs is not None and self.kind in COUNTER_TABLES else None
            sharer = Sharer(self, members, batch, idle_ms / 1e3, reader, publish, send_ms / 1e3)
            sharer.log.seed(chunks)                      # the members hold these already
            for m, c in sharer.peers.items():
                for i, piece in enumerate(pieces or [b""]):      # the first replaces, the rest add
                    c.request("share_put", src=sharer.name_for(m), **{"base" if i == 0 else "add": piece})
            sharer.start()
        except BaseException:
            Gate(self.nf).set_share(False)
            reader.close()
            raise
        self.sharer, self.global_state = sharer, gs
        return {"members": members, "batch": batch, "base_entries": sum(c.count for c in chunks),
                "base_bytes": sum(map(len, pieces)), "base_s": time.perf_counter() - t0}

    def op_share_stop(self, sock, r, req) -> dict:
        s = self.sharer
        if s is None:
            return {"stopped": False}
        Gate(self.nf).set_share(False)
        s.stop()
        s.reader.close()
        if self.global_state is not None:
            self.global_state.close()           # revokes the membership's lease
        self.sharer = self.global_state = None
        return {"stopped": True, **s.status()}

    def op_share_drop(self, sock, r, req) -> dict:
        member = req.get("member")
        if not isinstance(member, str) or not member:
            raise BadInput("share_drop needs member: the instance to stop sharing with")
        return {"dropped": self.sharer.drop(member) if self.sharer is not None else False}

    def op_share_status(self, sock, r, req) -> dict:
        return {"sharing": self.sharer.status() if self.sharer else None,
                "replicas": {**self.replicas.counts, **self.replicas.entries()}}

    def op_share_put(self, sock, r, req) -> dict:
        src = req.get("src")
        if not isinstance(src, str) or not src:
            raise BadInput("share_put needs src: the member that sends")
        if req.get("base") is not None:
            return {"base_entries": self.replicas.base(src, _b64(req, "base"))}
        if req.get("add") is not None:
            return {"base_entries": self.replicas.base(src, _b64(req, "add"), replace=False)}
        if req.get("forget") is not None:
            return {"forgot": self.replicas.forget({bytes(k) for k in keys_from_blob(_b64(req, "forget"))})}
        return self.replicas.apply(src, _b64(req, "blob"))

    def shared_put(self, chunks) -> None:
        """After a put (nfx/agent/ops_state.py): what it wrote joins the members' replicas."""
        if self.sharer is not None and chunks:
            r = self.sharer.add_base(blob_pieces(chunks, PIECE_BYTES))
            if r["errors"]:
                raise BadInput(f"{self.instance} wrote the state but could not share it with "
                               f"{', '.join(r['errors'])}: {next(iter(r['errors'].values()))}")

    def shared_forget(self, chunks) -> dict | None:
        """After a move across the cluster deleted its flows here (ops_state.op_del): this
        instance and its members forget their replicas of them."""
        if self.sharer is None:
            return None
        flows, outside = flow_keys(chunks)
        keys = list(flows) + list(outside)
        here = self.replicas.forget({bytes(k) for k in keys})
        r = self.sharer.forget(enc(keys_blob(keys)))
        return {"here": here, **r}

    def op_share_flush(self, sock, r, req) -> dict:
        if self.sharer is None:
            raise BadInput(f"{self.instance} does not share its state (nfx cluster up starts sharing)")
        return self._flush(parse(req.get("filter")))

    def _flush(self, flt) -> dict:
        """Every pending batch out, and the flows `flt` selects here (their keys: what the
        destination takes from its replicas, and nothing else)."""
        settle(self.nf, time.perf_counter())          # a packet that read no mark has been processed
        flows, outside = flow_keys(ops.export(self.nf, ("per-flow",), flt))
        keyset = {bytes(k) for k in flows}
        # the moved connections' pending batches, both directions (a NAT's return packets are
        # keyed by the public tuple)
        sent = self.sharer.flush(keyset | {bytes(k) for k in outside})
        # this instance keeps a replica of what it gives away (its members send it none of its
        # own flows): the batches of the flows' next instance land on it, and a move back finds it
        self.replicas.base(self.instance, chunks_blob(list(ops.export_flows(self.nf, BASE_SCOPES, flt, keyset))),
                           replace=False)
        return {**sent, "keys": enc(keys_blob(flows)), "keys_bytes": 16 * len(flows)}

    def cluster_push(self, peer, flt) -> dict:
        """DiST's state push inside a cluster (dist_source.py): this instance's pending batches to
        every member, then dst writes the moved flows from its replicas. Answers like a put."""
        if self.sharer is None:
            raise BadInput(f"{self.instance} does not share its state: a move inside a cluster needs sharing on")
        sent = self._flush(flt)
        if sent["errors"]:
            raise NfxError(f"{self.instance}'s batches to {', '.join(sent['errors'])} failed: "
                           "their replicas are incomplete; the move is called off")
        got = peer.request("replica_promote", filter=flt.text, src=self.instance, keys=sent["keys"])
        if got.get("failed"):
            raise NfxError(f"the destination could not write {len(got['failed'])} replica chunks: {got['failed'][0]}")
        return {"chunks": len(got.get("applied") or []), "bytes": sent["bytes"], "import_s": got["apply_s"],
                "applied_at": got["applied_at"], "cluster": cluster_figures(sent, got)}

    def op_replica_promote(self, sock, r, req) -> dict:
        src = req.get("src")
        if not isinstance(src, str) or not src:
            raise BadInput("replica_promote needs src: the member the flows move from")
        flt = parse(req.get("filter"))
        keyset = {bytes(k) for k in keys_from_blob(_b64(req, "keys"))} if req.get("keys") is not None else None
        t0 = time.perf_counter()
        chunks = self.replicas.select(flt, src, keyset)
        report = self._apply(chunks, True)
        self._state_changed()
        flows, outside = flow_keys(chunks)
        return {**report, "entries": sum(c.count for c in chunks), "bytes": sum(c.nbytes for c in chunks),
                "apply_s": time.perf_counter() - t0, "applied_at": time.perf_counter(),
                "flows": enc(keys_blob(flows)), "outside": enc(keys_blob(outside))}


def cluster_figures(sent: dict, got: dict) -> dict:
    """What a move inside a cluster sent (the source's last batches, to every member) and what
    the destination took from its replicas."""
    members = max(1, len(sent.get("members") or ()))
    return {"batches": sent["batches"], "batch_statelets": sent["statelets"], "batch_flows": sent["flows"],
            "batch_bytes_per_member": sent["bytes"], "batch_bytes": sent["bytes"] * members, "members": members,
            "keys_bytes": sent.get("keys_bytes", 0),
            "replica_entries": got["entries"], "replica_bytes": got["bytes"]}
