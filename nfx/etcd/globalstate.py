"""A testbed's global state in etcd (issue 13), under /nfx/<testbed>/; used by the agents (their
membership, their counters) and by nfx/cluster (the NAT pool's owners, status):

    members/<cluster>/<instance>   JSON {instance, cluster, joined, mgmt}, under a lease kept alive
                                   while the instance is up: a member that dies disappears
    nat/pool                       JSON {instance: [port_lo, port_hi]}: who owns which part of the NAT
                                   pool, changed only by compare-and-swap transactions (strong)
    counters/<table>/<instance>    JSON {name: value}: each instance's commutative counters, summed on
                                   read (merged eventually: each instance publishes its own key)
    strong/<name>                  an integer changed only by CAS transactions (ordered global updates)
    pairs/<slot>                   JSON {primary, secondary, epoch}: who serves a slot (named after its
                                   first primary) and who stands by; the switches follow it, and
                                   only a transaction that finds it unchanged changes it (issue 14)
"""
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable

from ..errors import AlreadyExists, BadInput, NfxError
from .client import Etcd, KeepAlive
from .watch import Watch

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(what: str, s: str) -> str:
    if not isinstance(s, str) or not _NAME.match(s) or s in (".", ".."):
        raise BadInput(f"{what} {s!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return s


class GlobalState:
    """One testbed's global state on `etcd`. Thread-safe; close() stops the keepalives it runs."""

    def __init__(self, etcd: Etcd, testbed: str):
        self.etcd = etcd
        self.testbed = _name("testbed", testbed)
        self.prefix = f"/nfx/{testbed}/"
        self._lock = threading.Lock()
        self._members: dict[tuple[str, str], KeepAlive] = {}

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    # ---- membership ----
    def join(self, cluster: str, instance: str, ttl_s: int = 10, mgmt: str | None = None,
             on_lost: Callable[[int], None] | None = None) -> KeepAlive:
        """Put the instance in the cluster under a lease this process keeps alive (until leave() or
        close()); if this process dies the member disappears within ttl_s. Joining again moves it.
        The KeepAlive returned says if etcd is out of reach (`error`) or the lease was lost (`lost`,
        `on_lost`: etcd was away longer than the TTL)."""
        _name("cluster", cluster), _name("instance", instance)
        self.leave(instance=instance)
        lease, granted = self.etcd.grant(ttl_s)
        rec = {"instance": instance, "cluster": cluster, "joined": time.time(), "lease": lease, "ttl_s": granted}
        if mgmt:
            rec["mgmt"] = mgmt
        try:
            self.etcd.put_json(self.key("members", cluster, instance), rec, lease=lease)
        except BaseException:
            with contextlib.suppress(NfxError):      # the lease would expire anyway
                self.etcd.revoke(lease)
            raise
        ka = KeepAlive(self.etcd, lease, granted, on_lost)
        with self._lock:
            self._members[(cluster, instance)] = ka
        return ka

    def leave(self, cluster: str | None = None, instance: str | None = None) -> int:
        """Take the instance out (of `cluster`, or of any); how many memberships ended."""
        n = 0
        for c, insts in self.member_records().items():
            for i, rec in insts.items():
                if (cluster is None or c == cluster) and (instance is None or i == instance):
                    with self._lock:
                        ka = self._members.pop((c, i), None)
                    if ka:
                        ka.stop()
                    if rec.get("lease"):
                        self.etcd.revoke(rec["lease"])       # its key goes with it
                    self.etcd.delete(self.key("members", c, i))
                    n += 1
        return n

    def member_records(self, cluster: str | None = None) -> dict[str, dict[str, dict]]:
        """{cluster: {instance: record}} of the live members."""
        out: dict[str, dict[str, dict]] = {}
        for k, v in self.etcd.range(self.key("members", cluster) + "/" if cluster else self.key("members") + "/").items():
            c, i = k[len(self.prefix) + len("members/"):].split("/", 1)
            out.setdefault(c, {})[i] = json.loads(v)
        return out

    def members(self, cluster: str | None = None) -> dict[str, list[str]]:
        """{cluster: [instances, sorted]} of the live members."""
        return {c: sorted(m) for c, m in sorted(self.member_records(cluster).items())}

    def watch_members(self, callback: Callable[[str, str, str], None], on_error=None):
        """Call `callback(event, cluster, instance)` ("PUT" joined, "DELETE" left or expired) for each
        membership change from now on; a Watch (stop() it)."""
        p = self.key("members") + "/"

        def on_event(ev):
            c, i = ev.key.decode()[len(p):].split("/", 1)
            callback(ev.type, c, i)
        return Watch(self.etcd, p, on_event, on_error=on_error)

    # ---- NAT pool ownership (strong) ----
    def owners(self) -> dict[str, tuple[int, int]]:
        return {i: (lo, hi) for i, (lo, hi) in (self.etcd.get_json(self.key("nat", "pool"), {}) or {}).items()}

    def claim_ports(self, instance: str, lo: int, hi: int, deadline_s: float = 10.0) -> dict[str, tuple[int, int]]:
        """Give the instance ports lo..hi (replacing a range it had) if nobody else owns any of them,
        by CAS on the pool key, retried on conflict; the owners after it. AlreadyExists if they overlap."""
        _name("instance", instance)
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 65535):
            raise BadInput(f"port range {lo}-{hi}: want 1 <= lo <= hi <= 65535")

        def claim(cur: bytes | None) -> str:
            pool = json.loads(cur) if cur else {}
            for other, (olo, ohi) in pool.items():
                if other != instance and lo <= ohi and olo <= hi:
                    raise AlreadyExists(f"NAT ports {lo}-{hi} overlap {olo}-{ohi} owned by {other}",
                                        hint="claim a range no other instance owns (nfx cluster status shows the owners)")
            pool[instance] = [lo, hi]
            return json.dumps(pool, sort_keys=True)

        new, _, _ = self.etcd.update(self.key("nat", "pool"), claim, deadline_s)
        return {i: tuple(r) for i, r in json.loads(new).items()}

    def release_ports(self, instance: str, deadline_s: float = 10.0) -> tuple[int, int] | None:
        """Give the instance's range back; the range it had, or None."""
        had = []

        def release(cur: bytes | None) -> str:
            pool = json.loads(cur) if cur else {}
            had[:] = [pool.pop(instance, None)]
            return json.dumps(pool, sort_keys=True)

        self.etcd.update(self.key("nat", "pool"), release, deadline_s)
        return tuple(had[0]) if had and had[0] else None

    # ---- primary/secondary pairs (strong) ----
    def set_pair(self, slot: str, primary: str, secondary: str | None) -> dict:
        _name("slot", slot), _name("instance", primary)
        rec = {"primary": primary, "secondary": secondary, "epoch": 1}
        self.etcd.put_json(self.key("pairs", slot), rec)
        return rec

    def pair(self, slot: str) -> tuple[dict, int] | None:
        """The slot's record and its mod revision (what a transaction compares)."""
        kv = self.etcd.get_kv(self.key("pairs", _name("slot", slot)))
        return (json.loads(kv.value), kv.mod_revision) if kv else None

    def pairs(self) -> dict[str, dict]:
        p = self.key("pairs") + "/"
        return {k[len(p):]: json.loads(v) for k, v in self.etcd.range(p).items()}

    def take_over(self, slot: str, failed: str, secondary: str | None = None,
                  known: tuple[dict, int] | None = None) -> dict | None:
        """The slot's secondary becomes its primary, if `failed` is still the primary and the
        record has not changed since it was read (one transaction): the new record, or None when
        somebody else changed it first (two detectors, one winner). `known`: the record and its
        revision as the caller last saw them (saves a read; if it is stale the transaction
        fails and nothing changes)."""
        got = known or self.pair(slot)
        if got is None:
            raise BadInput(f"no pair {slot!r} in etcd")
        rec, rev = got
        if rec["primary"] != failed or not rec.get("secondary"):
            return None
        new = {"primary": rec["secondary"], "secondary": secondary, "epoch": rec["epoch"] + 1}
        if not self.etcd.swap(self.key("pairs", slot), json.dumps(new, sort_keys=True), rev):
            return None
        return new

    def swap_primary(self, slot: str, primary: str, to: str) -> bool:
        """A planned change (failback): `to`, the secondary, serves the slot, `primary` stands by."""
        got = self.pair(slot)
        if got is None or got[0]["primary"] != primary or got[0].get("secondary") != to:
            return False
        rec, rev = got
        new = {"primary": to, "secondary": primary, "epoch": rec["epoch"] + 1}
        return self.etcd.swap(self.key("pairs", slot), json.dumps(new, sort_keys=True), rev)

    def set_secondary(self, slot: str, primary: str, secondary: str | None) -> dict | None:
        """A new secondary for the slot while `primary` serves it (one transaction)."""
        got = self.pair(slot)
        if got is None or got[0]["primary"] != primary:
            return None
        rec, rev = got
        new = {**rec, "secondary": secondary, "epoch": rec["epoch"] + 1}
        return new if self.etcd.swap(self.key("pairs", slot), json.dumps(new, sort_keys=True), rev) else None

    # ---- commutative counters (eventual) ----
    def publish_counters(self, instance: str, table: str, counters: dict[str, int]) -> int:
        """Replace the instance's counters of `table` (its own key: no conflicts); the revision."""
        _name("instance", instance), _name("table", table)
        return self.etcd.put_json(self.key("counters", table, instance), {str(k): int(v) for k, v in counters.items()})

    def counters(self, table: str) -> dict[str, dict[str, int]]:
        """{instance: {name: value}} as each instance last published them."""
        _name("table", table)
        p = self.key("counters", table) + "/"
        return {k[len(p):]: json.loads(v) for k, v in self.etcd.range(p).items()}

    def merged_counters(self, table: str) -> dict[str, int]:
        """The sum over instances of each counter of `table`."""
        out: dict[str, int] = {}
        for c in self.counters(table).values():
            for k, v in c.items():
                out[k] = out.get(k, 0) + int(v)
        return dict(sorted(out.items()))

    def forget_counters(self, instance: str | None = None) -> int:
        if instance is None:
            return self.etcd.delete(self.key("counters") + "/", prefix=True)
        n = 0
        for t in {k.split("/")[-2] for k in self.etcd.range(self.key("counters") + "/")}:
            n += self.etcd.delete(self.key("counters", t, instance))
        return n

    # ---- strong counters ----
    def strong_add(self, name: str, delta: int, deadline_s: float = 10.0) -> int:
        """Add `delta` to the global integer `name` by CAS (every add applied once, in one order); its new value."""
        _name("counter", name)
        new, _, _ = self.etcd.update(self.key("strong", name), lambda cur: str(int(cur or 0) + int(delta)), deadline_s)
        return int(new)

    def strong_get(self, name: str) -> int:
        got = self.etcd.get(self.key("strong", _name("counter", name)))
        return int(got[0]) if got else 0

    # ---- the whole testbed ----
    def dump(self) -> dict:
        return {"members": self.members(), "nat_pool": self.owners(), "pairs": self.pairs(),
                "strong": {k.rsplit("/", 1)[1]: int(v) for k, v in self.etcd.range(self.key("strong") + "/").items()}}

    def wipe(self) -> int:
        """Remove every key of the testbed (after its cluster is down)."""
        self.close()
        return self.etcd.delete(self.prefix, prefix=True)

    def close(self, revoke: bool = True) -> None:
        """Stop the keepalives of the members this object joined (revoking their leases, so they leave
        now). Best effort: with etcd out of reach the leases expire on their own after their TTL."""
        with self._lock:
            kas, self._members = list(self._members.values()), {}
        for ka in kas:
            try:
                ka.stop(revoke=revoke)
            except NfxError:
                ka.stop(revoke=False)

    def __enter__(self) -> "GlobalState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
