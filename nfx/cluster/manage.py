"""`nfx cluster up|down|status|rejoin|failback` (issues 13, 14): a testbed's clusters brought up
and down as one step, all or nothing.

up:   etcd (the one given, or a local one started here, on free ports, that outlives the command
      and is stopped by `down` or by `testbed down`); each NAT instance's slice of the public port
      range claimed in etcd by compare-and-swap (no two instances own a port); the stamper on at
      the switches (through the controller, the switches' one writer at runtime); every member
      sharing its flows' deltas with the other members of its cluster, joined in etcd under its
      agent's lease, its commutative counters published there; with pairs, their records in
      etcd and failover's detector in the controller (nfx/control/failover.py).
down: the reverse; the testbed's keys in etcd go.
rejoin, failback: a failed instance back, and the traffic back to it once synced
      (nfx/control/failback.py).
What runs is in the registry record (rec["cluster"]: etcd and settings; rec["sharing"]: what
shares, sharing.py)."""
import urllib.parse
from pathlib import Path

from .. import registry
from ..errors import BadInput, NfxError
from ..etcd import Etcd, LocalEtcd
from ..etcd.globalstate import GlobalState
from ..loader import attach, netns
from ..procs import agents
from ..testbed.topology import check_pairs
from ..nfs import open_node
from ..procs import controller
from . import pairs as pairs_
from . import sharing


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def up(name: str, clusters_text: str | None = None, batch: int | str = sharing.DEFAULT_BATCH,
       idle_ms: float = sharing.DEFAULT_IDLE_MS, etcd_url: str | None = None, stamp: bool = True,
       progress=lambda m: None, pairs_text: str | None = None, spares_text: str | None = None,
       heartbeat_ms: float = pairs_.DEFAULT_HEARTBEAT_MS, misses: int = pairs_.DEFAULT_MISSES,
       ttl_s: int = pairs_.DEFAULT_TTL_S, send_ms: float | None = None) -> dict:
    if etcd_url is not None and urllib.parse.urlsplit(etcd_url).hostname in LOOPBACK:
        raise BadInput(f"--etcd {etcd_url}: the agents run in their own network namespaces, where a loopback "
                       "address is their own", hint="give an address the testbed's management network reaches, "
                       "or leave --etcd out for a private etcd there")
    rec = registry.load(name)
    if rec.get("cluster"):
        raise BadInput(f"testbed {name}'s clusters are up already", hint=f"nfx cluster down --name {name}")
    nfs = sharing.nf_instances(rec)
    clusters = sharing.parse_clusters(clusters_text, nfs) if clusters_text else rec.get("clusters")
    if not clusters:
        raise BadInput(f"testbed {name} has no clusters: its topology names none",
                       hint="give them: --clusters nf0,nf1/nf2,nf3")
    sharing.check_clusters(clusters, nfs)
    batch = sharing.parse_batch(batch, clusters)      # S_batch per cluster
    pairs = pairs_.parse_pairs(pairs_text) if pairs_text else dict(rec.get("pairs") or {})
    spares = pairs_.parse_spares(spares_text) if spares_text is not None else list(rec.get("spares") or [])
    if pairs:
        check_pairs(pairs, spares, clusters, nfs)
        if not 1 <= heartbeat_ms <= 10_000 or not 1 <= misses <= 1000 or not 1 <= ttl_s <= 3600:
            raise BadInput("--heartbeat-ms is 1..10000, --misses 1..1000, --lease-s 1..3600")
    if not 1 <= idle_ms <= 600_000:
        raise BadInput(f"--idle-ms is 1..600000, not {idle_ms:g}")
    if send_ms is None and pairs:
        send_ms = pairs_.PAIR_SEND_MS
    if send_ms is not None and not 0 <= send_ms <= 1000:
        raise BadInput(f"--send-ms is 0..1000, not {send_ms:g}")
    local = None
    done: list[str] = []
    gs = None
    if etcd_url is None:
        progress("a local etcd")
        # on the management network, where the agents are; outlives this command: down stops it
        mg = rec["mgmt"]
        local = LocalEtcd(die_with_parent=False, ns=mg["ns"], host=mg["controller"],
                          enter=_enter(rec, mg["controller"])).detach()
        etcd_url = local["url"]
    # in the record before anything else: whatever happens next, down (or testbed down) finds it
    rec["cluster"] = {"etcd": etcd_url, "local_etcd": local, "batch": batch, "idle_ms": idle_ms, "stamp": stamp,
                      "pairs": pairs, "spares": spares}
    rec.save()
    try:
        etcd = _etcd(rec, etcd_url)
        if not etcd.health():
            raise NfxError(f"etcd at {etcd_url} answers but is not healthy")
        gs = GlobalState(etcd, name)
        if rec.get("nf") == "nat":
            progress("the NAT pool's owners in etcd")
            for n in rec.instances():        # a borrowed instance's pool is its own testbed's
                c = open_node(rec.nf(n)).config()
                gs.claim_ports(n, c.port_lo, c.port_hi)
            done.append("ports")
        if stamp:
            progress("the stamper on")
            controller.call(name, "POST", "/stamp", {"on": True})
            done.append("stamp")
        progress(f"sharing in {len(clusters)} clusters (S_batch {batch_text(batch)})")
        shared = sharing.start(rec, clusters, batch, idle_ms, etcd_url, ttl_s=ttl_s if pairs else None, send_ms=send_ms)
        done.append("sharing")
        failover = None
        if pairs:
            progress(f"failover for {len(pairs)} pairs (heartbeat {heartbeat_ms:g} ms x {misses}, lease {ttl_s} s)")
            for p, s in pairs.items():
                gs.set_pair(p, p, s)
            of = {m: c for c, ms in clusters.items() for m in ms}
            failover = controller.call(name, "POST", "/failover", {
                "on": True, "etcd": etcd_url, "pairs": {p: [p, s] for p, s in pairs.items()}, "spares": spares,
                "heartbeat_ms": heartbeat_ms, "misses": misses, "ttl_s": ttl_s,
                "batch": max(batch[of[p]] for p in pairs), "idle_ms": idle_ms, "send_ms": send_ms})
    except BaseException:
        _undo(name, rec, gs, done)
        raise
    return {"name": name, "clusters": clusters, "etcd": etcd_url, "local_etcd": bool(local), "batch": batch,
            "idle_ms": idle_ms, "stamp": stamp, "nat_pool": gs.owners(), "members": shared,
            "pairs": pairs, "spares": spares, "failover": failover}


def batch_text(batch: dict[str, int]) -> str:
    """'30' when every cluster has the same S_batch, else 'c0 30, c1 10'."""
    if len(set(batch.values())) == 1:
        return str(next(iter(batch.values())))
    return ", ".join(f"{c} {n}" for c, n in batch.items())


def _enter(rec, host: str):
    """Connections to an etcd the management network reaches (registry.via_mgmt) are made from
    its namespace; any other from here."""
    return (lambda: netns.enter(rec["mgmt"]["ns"])) if rec.via_mgmt(host) else None


def _etcd(rec, url: str) -> Etcd:
    e = Etcd(url)
    e.enter = _enter(rec, e.host)
    return e


def _undo(name, rec, gs, done) -> None:
    _failover_off(name)
    if "sharing" in done:
        sharing.stop(rec)
    if "stamp" in done:
        try:
            controller.call(name, "POST", "/stamp", {"on": False})
        except NfxError:
            pass
    if gs is not None:
        try:
            gs.wipe()
        except NfxError:
            pass
    info = (rec.get("cluster") or {}).get("local_etcd")
    if info:
        LocalEtcd.stop_detached(info)
    rec.pop("cluster", None)
    rec.save()


def rejoin(name: str, inst: str) -> dict:
    """A failed instance back: its program on its ports again (a dead instance's was detached),
    its agent started if it is not running, then the controller takes it as a secondary or a
    spare. Its gate stays fenced: it takes traffic only after a failback, once synced."""
    rec = registry.load(name)
    cl = rec.get("cluster") or {}
    if not cl.get("pairs"):
        raise BadInput(f"testbed {name} has no failover pairs up", hint=f"nfx cluster up --name {name} --pairs ...")
    node = rec.nf(inst)
    info = rec["nodes"][inst]
    attached = attach.xdp_attachments(info["ns"])
    reattached = []
    for ifname in info["ifaces"].values():
        if ifname not in attached:
            attach.attach_xdp_pinned(info["ns"], ifname, str(Path(node.pin) / "prog"))
            reattached.append(ifname)
    started = False
    if agents.pid_of(rec, inst) is None:
        agents.start(rec, inst)
        started = True
    out = controller.call(name, "POST", "/rejoin", {"instance": inst})
    return {**out, "reattached": reattached, "agent_started": started}


def failback(name: str, slot: str, to: str) -> dict:
    return controller.call(name, "POST", "/failback", {"slot": slot, "to": to})


def _failover_off(name: str) -> dict | None:
    """The failure detection unit stops before anything it watches does (a member that leaves
    must not look like one that failed)."""
    try:
        return controller.call(name, "POST", "/failover", {"on": False})
    except NfxError as e:
        return {"error": str(e)}


def down(name: str) -> dict:
    rec = registry.load(name)
    cl = rec.get("cluster")
    if not cl:
        raise BadInput(f"testbed {name} has no clusters up", hint=f"nfx cluster up --name {name}")
    out = {"name": name, "failover": _failover_off(name), "members": sharing.stop(rec)}
    if cl.get("stamp"):
        try:
            out["stamp"] = controller.call(name, "POST", "/stamp", {"on": False})
        except NfxError as e:
            out["stamp"] = {"error": str(e)}
    try:
        out["etcd_keys_removed"] = GlobalState(_etcd(rec, cl["etcd"]), name).wipe()
    except NfxError as e:
        out["etcd_keys_removed"] = {"error": str(e)}
    if cl.get("local_etcd"):
        out["local_etcd_stopped"] = LocalEtcd.stop_detached(cl["local_etcd"])
    rec.pop("cluster", None)
    rec.save()
    return out


def status(name: str) -> dict:
    rec = registry.load(name)
    cl = rec.get("cluster")
    out = {"name": name, "up": bool(cl), "clusters": rec.clusters_in_force()}
    if not cl:
        return out
    out.update(etcd=cl["etcd"], batch=cl["batch"], idle_ms=cl["idle_ms"], stamp=cl["stamp"])
    try:
        gs = GlobalState(_etcd(rec, cl["etcd"]), name)
        out["etcd_members"] = gs.members()
        out["nat_pool"] = gs.owners()
        out["pairs"] = gs.pairs()
        if rec.get("nf") == "ids":
            out["ids_global"] = gs.merged_counters("ids_global")
    except NfxError as e:
        out["etcd_error"] = str(e)
    out["instances"] = sharing.status(rec)
    if cl.get("pairs"):
        try:
            out["failover"] = controller.call(name, "GET", "/status").get("failover")
        except NfxError as e:
            out["failover"] = {"error": str(e)}
    return out
