"""`nfx cluster up|down|status` (issue 13): a testbed's clusters brought up and down as one step,
all or nothing.

up:   etcd (the one given, or a local one started here, on free ports, that outlives the command
      and is stopped by `down` or by `testbed down`); each NAT instance's slice of the public port
      range claimed in etcd by compare-and-swap (no two instances own a port); the stamper on at
      the switches (through the controller, the switches' one writer at runtime); every member
      sharing its flows' deltas with the other members of its cluster, joined in etcd under its
      agent's lease, its commutative counters published there.
down: the reverse; the testbed's keys in etcd go.
What runs is in the registry record (rec["cluster"]: etcd and settings; rec["sharing"]: what
shares, sharing.py)."""
import urllib.parse

from .. import registry
from ..errors import BadInput, NfxError
from ..etcd import Etcd, LocalEtcd
from ..etcd.globalstate import GlobalState
from ..loader import netns
from ..nfs import open_node
from ..procs import controller
from . import sharing


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def up(name: str, clusters_text: str | None = None, batch: int | str = sharing.DEFAULT_BATCH,
       idle_ms: float = sharing.DEFAULT_IDLE_MS, etcd_url: str | None = None, stamp: bool = True,
       progress=lambda m: None) -> dict:
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
    if not 1 <= idle_ms <= 600_000:
        raise BadInput(f"--idle-ms is 1..600000, not {idle_ms:g}")
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
    rec["cluster"] = {"etcd": etcd_url, "local_etcd": local, "batch": batch, "idle_ms": idle_ms, "stamp": stamp}
    rec.save()
    try:
        etcd = _etcd(rec, etcd_url)
        if not etcd.health():
            raise NfxError(f"etcd at {etcd_url} answers but is not healthy")
        gs = GlobalState(etcd, name)
        if rec.get("nf") == "nat":
            progress("the NAT pool's owners in etcd")
            for n in nfs:
                c = open_node(rec.nf(n)).config()
                gs.claim_ports(n, c.port_lo, c.port_hi)
            done.append("ports")
        if stamp:
            progress("the stamper on")
            controller.call(name, "POST", "/stamp", {"on": True})
            done.append("stamp")
        progress(f"sharing in {len(clusters)} clusters (S_batch {batch_text(batch)})")
        shared = sharing.start(rec, clusters, batch, idle_ms, etcd_url)
    except BaseException:
        _undo(name, rec, gs, done)
        raise
    return {"name": name, "clusters": clusters, "etcd": etcd_url, "local_etcd": bool(local), "batch": batch,
            "idle_ms": idle_ms, "stamp": stamp, "nat_pool": gs.owners(), "members": shared}


def batch_text(batch: dict[str, int]) -> str:
    """'30' when every cluster has the same S_batch, else 'c0 30, c1 10'."""
    if len(set(batch.values())) == 1:
        return str(next(iter(batch.values())))
    return ", ".join(f"{c} {n}" for c, n in batch.items())


def _enter(rec, host: str):
    """Connections to an etcd on the testbed's management network are made from its namespace."""
    if host != rec["mgmt"]["controller"]:
        return None
    return lambda: netns.enter(rec["mgmt"]["ns"])


def _etcd(rec, url: str) -> Etcd:
    e = Etcd(url)
    e.enter = _enter(rec, e.host)
    return e


def _undo(name, rec, gs, done) -> None:
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


def down(name: str) -> dict:
    rec = registry.load(name)
    cl = rec.get("cluster")
    if not cl:
        raise BadInput(f"testbed {name} has no clusters up", hint=f"nfx cluster up --name {name}")
    out = {"name": name, "members": sharing.stop(rec)}
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
    out = {"name": name, "up": bool(cl), "clusters": sharing.in_force(rec)}
    if not cl:
        return out
    out.update(etcd=cl["etcd"], batch=cl["batch"], idle_ms=cl["idle_ms"], stamp=cl["stamp"])
    try:
        gs = GlobalState(_etcd(rec, cl["etcd"]), name)
        out["etcd_members"] = gs.members()
        out["nat_pool"] = gs.owners()
        if rec.get("nf") == "ids":
            out["ids_global"] = gs.merged_counters("ids_global")
    except NfxError as e:
        out["etcd_error"] = str(e)
    out["instances"] = sharing.status(rec)
    return out
