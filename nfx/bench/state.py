"""nfx bench state: how fast NF state leaves one instance and lands in another.

A sharp testbed with two NAT instances; nf0 is filled (batch update) with N synthetic NAT
connections that are consistent the way the datapath makes them: a nat_fwd entry keyed by the
inside flow, a nat_rev entry keyed by the translated return flow, and the public (address,
port, proto) in nat_ports, with the datapath's paired pooling (one inside host, one public
address). Then agent nf0 pushes everything to agent nf1 over TCP on the management bridge, and
three phases are timed separately: export (maps to chunks, in agent nf0), transfer (the chunk
stream from nf0 until nf1 has all of it) and import (chunks to maps, in agent nf1). The baseline,
measured in the same run on a sample and extrapolated: per-entry export (get-next-key + lookup)
and per-entry import (one update per entry). Each run pushes twice: the three legs one after the
other (`push_sequential`, each leg timed alone), then pipelined (`push_total`: chunks exported,
sent and applied as they come). `cpu_bound` is what the machine's CPUs allow: the two legs' CPU
time over the CPU count. `kernel_floor` is what the kernel's own calls cost an entry (the batch
lookup and the batch update alone, on nf0's tables, in this process): no push beats it on this
machine, whatever it overlaps. nf1's state is checked equal to nf0's afterwards."""
import ctypes as ct
import ipaddress
import os
import secrets
import statistics
import time

import numpy as np

from .. import layout as L
from ..agent.client import AgentClient
from ..errors import BadInput, NfxError
from ..loader import bpfsys
from ..loader.maps import Map
from ..state.tables import SCOPES, tables
from ..nfs.nat import monotonic_ns, parse_pool
from ..nfs.nat import pool_hash
from .. import registry
from ..testbed import builder, topology
from . import host

POOL = "10.0.2.100-10.0.2.163"          # 64 public addresses: 5.1 M (address, port, proto) slots
INSIDE_HOSTS = 253                       # 10.0.1.2 .. 10.0.1.254
EPHEMERAL = (32768, 60999)
# (dport, proto, share): what a busy access network's NAT table holds
SERVICES = [(443, 6, 0.46), (80, 6, 0.14), (443, 17, 0.12), (53, 17, 0.09), (8080, 6, 0.03), (993, 6, 0.03),
            (123, 17, 0.03), (5222, 6, 0.02), (22, 6, 0.02), (3478, 17, 0.02), (0, 1, 0.02), (25, 6, 0.02)]
SYN, ACK, PSH, FIN = L.TCP_SYN, L.TCP_ACK, 0x08, L.TCP_FIN


def _be32(host: np.ndarray) -> np.ndarray:
    return host.astype("<u4").byteswap()


def _be16(host: np.ndarray) -> np.ndarray:
    return host.astype("<u2").byteswap()




def synth_nat(n: int, pool: str = POOL, port_lo: int = 20000, port_hi: int = 59999, seed: int = 7) -> dict:
    """N connections as the three tables' raw arrays: {table: (keys ndarray, values ndarray)}."""
    rng = np.random.default_rng(seed)
    base, count = parse_pool(pool)
    i = np.arange(n, dtype=np.int64)
    inside = np.uint32(int(ipaddress.IPv4Address("10.0.1.2"))) + (i % INSIDE_HOSTS).astype(np.uint32)
    span_e = EPHEMERAL[1] - EPHEMERAL[0] + 1
    if n > INSIDE_HOSTS * span_e:
        raise BadInput(f"at most {INSIDE_HOSTS * span_e:,} synthetic connections")
    sport = (EPHEMERAL[0] + (i // INSIDE_HOSTS) % span_e).astype(np.uint32)   # unique per (host, sport)
    svc = rng.choice(len(SERVICES), size=n, p=np.array([s[2] for s in SERVICES]) / sum(s[2] for s in SERVICES))
    dport = np.array([s[0] for s in SERVICES], dtype=np.uint32)[svc]
    proto = np.array([s[1] for s in SERVICES], dtype=np.uint8)[svc]
    # servers: 20k addresses spread over public space (skipping 0/8, 10/8, 127/8, 224/4 and up)
    servers = rng.integers(int(ipaddress.IPv4Address("11.0.0.1")), int(ipaddress.IPv4Address("223.255.255.254")),
                           size=20000, dtype=np.uint64).astype(np.uint32)
    remote = servers[rng.integers(0, len(servers), size=n)]
    # public side: the host's pool address, ports handed out in order per (address, proto)
    pub = (base + pool_hash(inside) % np.uint64(count)).astype(np.uint32)
    span = port_hi - port_lo + 1
    group = pub.astype(np.uint64) * np.uint64(256) + proto
    order = np.argsort(group, kind="stable")
    g_sorted = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    if rank.max(initial=0) >= span:
        raise BadInput(f"{n:,} connections overflow the port range of one public address; use a larger pool")
    pport = (port_lo + rank).astype(np.uint32)
    icmp = proto == 1
    # ICMP echo: the inside key carries the echo id as sport, dport 0; the outside key has the
    # public id as dport and sport 0 (as nat_alloc writes it)
    in_dport = np.where(icmp, 0, dport)
    out_sport = np.where(icmp, 0, dport)

    K = np.dtype(L.FlowKey)
    fwd_k = np.zeros(n, K)
    fwd_k["saddr"], fwd_k["daddr"] = _be32(inside), _be32(remote)
    fwd_k["sport"], fwd_k["dport"], fwd_k["proto"] = _be16(sport), _be16(in_dport), proto
    rev_k = np.zeros(n, K)
    rev_k["saddr"], rev_k["daddr"] = _be32(remote), _be32(pub)
    rev_k["sport"], rev_k["dport"], rev_k["proto"] = _be16(out_sport), _be16(pport), proto

    now = monotonic_ns()
    age = rng.integers(1, 240, size=n, dtype=np.int64) * 1_000_000_000
    idle = rng.integers(0, 20_000, size=n, dtype=np.int64) * 1_000_000
    created = np.maximum(now - age, 1).astype(np.uint64)
    last = np.maximum(now - idle, created.astype(np.int64)).astype(np.uint64)
    pk_out = rng.integers(1, 2000, size=n, dtype=np.int64).astype(np.uint64)
    pk_in = (pk_out * rng.uniform(0.5, 3.0, size=n)).astype(np.uint64) + np.uint64(1)
    flags_out = np.where(proto == 6, SYN | ACK | PSH, 0).astype(np.uint32)
    flags_in = np.where(proto == 6, SYN | ACK | PSH, 0).astype(np.uint32)

    E = np.dtype(L.NatEntry)
    fwd_v = np.zeros(n, E)
    fwd_v["peer"] = rev_k
    fwd_v["pkts"], fwd_v["bytes"] = pk_out, pk_out * np.uint64(180)
    fwd_v["created_ns"], fwd_v["last_seen_ns"], fwd_v["tcp_flags"] = created, last, flags_out
    rev_v = np.zeros(n, E)
    rev_v["peer"] = fwd_k
    rev_v["pkts"], rev_v["bytes"] = pk_in, pk_in * np.uint64(900)
    rev_v["created_ns"], rev_v["last_seen_ns"], rev_v["tcp_flags"] = created, last, flags_in

    P = np.dtype(L.NatPort)
    port_k = np.zeros(n, P)
    port_k["addr"], port_k["port"], port_k["proto"] = _be32(pub), _be16(pport), proto
    return {"nat_fwd": (fwd_k, fwd_v), "nat_rev": (rev_k, rev_v), "nat_ports": (port_k, fwd_k.copy())}


def fill(nf, tables: dict, batch: int = 1 << 18) -> float:
    """Batch-update the synthetic tables into an instance's maps; returns seconds."""
    t0 = time.perf_counter()
    for name, (k, v) in tables.items():
        m = nf.maps[name]
        kb, vb = bytearray(k.tobytes()), bytearray(v.tobytes())
        ks, vs = ct.sizeof(m.Key), ct.sizeof(m.Slot)
        for lo in range(0, len(k), batch):
            c = min(batch, len(k) - lo)
            keys = (m.Key * c).from_buffer(kb, lo * ks)
            vals = (m.Slot * c).from_buffer(vb, lo * vs)
            m.update_batch(keys, vals, c)
    return time.perf_counter() - t0


# ---- checking ----------------------------------------------------------------------------------
def _rows(chunks) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    by = {}
    for c in chunks:
        by.setdefault(c.table, []).append(c)
    out = {}
    for t, cs in by.items():
        ks, vs = cs[0].key_size, cs[0].value_size * cs[0].ncpu
        k = np.concatenate([np.frombuffer(c.keys, np.uint8) for c in cs]).reshape(-1, ks)
        v = np.concatenate([np.frombuffer(c.values, np.uint8) for c in cs]).reshape(-1, vs)
        order = np.argsort(k.view(f"V{ks}").ravel(), kind="stable")
        out[t] = (k[order], v[order])
    return out


def compare(a_chunks, b_chunks) -> dict:
    """Byte-for-byte, table by table, in key order: {table: {"a": n, "b": n, "same": bool}}."""
    a, b = _rows(a_chunks), _rows(b_chunks)
    out = {}
    for t in sorted(set(a) | set(b)):
        ka, va = a.get(t, (np.zeros((0, 1), np.uint8),) * 2)
        kb, vb = b.get(t, (np.zeros((0, 1), np.uint8),) * 2)
        same = ka.shape == kb.shape and va.shape == vb.shape and np.array_equal(ka, kb) and np.array_equal(va, vb)
        out[t] = {"a": len(ka), "b": len(kb), "same": bool(same)}
    return out


# ---- per-entry baseline ------------------------------------------------------------------------
def per_entry_export(m, sample: int) -> tuple[int, float]:
    """Walk with get-next-key, one lookup per key: the way without batch ops."""
    t0 = time.perf_counter()
    n = 0
    for k in m.keys():
        if m.get(k) is not None:
            n += 1
        if n >= sample:
            break
    return n, time.perf_counter() - t0


def per_entry_import(m, keys: np.ndarray, vals: np.ndarray) -> tuple[int, float]:
    """One BPF_MAP_UPDATE_ELEM per entry."""
    n = len(keys)
    ka = (m.Key * n).from_buffer(bytearray(keys.tobytes()))
    va = (m.Slot * n).from_buffer(bytearray(vals.tobytes()))
    t0 = time.perf_counter()
    for i in range(n):
        m.put(ka[i], va[i])
    return n, time.perf_counter() - t0


# ---- what the kernel alone costs -----------------------------------------------------------------
def kernel_floor(nf, chunk_entries: int = 65536) -> dict:
    """The kernel's own cost of a pushed entry on this machine, CPU time in this process: the
    instance's tables read with the batch lookup (the export's kernel call) and put into empty
    copies of them with the batch update (the import's), in chunks as a push sends them. No
    push, however its legs overlap, beats cpus / (export + import) entries/s."""
    exp_s = imp_s = 0.0
    entries = 0
    for t in tables(nf.kind, SCOPES):
        m = nf.maps.get(t.name)
        if m.info.type not in (bpfsys.MAP_HASH, bpfsys.MAP_LRU_HASH, bpfsys.MAP_PERCPU_HASH):
            continue          # an array's cost is its size, not its entries
        c0 = time.thread_time()
        batches = list(m.export_batches(chunk_entries))
        exp_s += time.thread_time() - c0
        copy = Map(bpfsys.map_create(m.info), m.Key, m.Value, owns_fd=True)     # empty, no BTF
        try:
            c0 = time.thread_time()
            for n, keys, vals in batches:
                copy.update_batch(keys, vals, n)
            imp_s += time.thread_time() - c0
        finally:
            copy.close()
        entries += sum(n for n, _, _ in batches)
    cpus = len(os.sched_getaffinity(0))
    per = (exp_s + imp_s) / entries if entries else None
    return {"entries": entries, "export_us": exp_s / entries * 1e6 if entries else None,
            "import_us": imp_s / entries * 1e6 if entries else None, "cpus": cpus,
            "entries_per_s": cpus / per if per else None}


def run(flows: int = 1_000_000, reps: int = 3, sample: int = 100_000, keep: bool = False,
        parallel: bool = True, progress=None) -> dict:
    progress = progress or (lambda m: None)
    if not 1 <= flows <= 4_000_000:
        raise BadInput("--flows must be 1..4000000")
    if reps < 1 or sample < 1:
        raise BadInput("--reps and --sample must be at least 1")
    name = "bs" + secrets.token_hex(3)
    topo = topology.load("sharp", 2)
    topo.pool = POOL
    # the power of two that holds N with a few percent to spare (1 M connections: 2^20); the
    # kernel rounds a hash map's buckets up to one anyway. (Walking empty buckets is cheap: a
    # batch lookup of an empty 2^21-bucket map takes 9 ms; its cost is per entry, ~0.25 us.)
    max_flows = 1 << max(10, (flows + flows // 32 - 1).bit_length())
    progress(f"testbed {name}: sharp, 2 NAT instances, max_flows {max_flows:,}")
    t0 = time.perf_counter()
    # the whole port range, halved between the two instances: nf0 holds ~25k ports of a public address
    builder.up(name, topo, "nat", max_flows, progress=lambda m: progress(f"  {m}"),
               nf_settings=["port_lo=1024", "port_hi=65535"])
    res = {"testbed": name, "flows": flows, "max_flows": max_flows, "reps": reps, "up_s": time.perf_counter() - t0}
    host0 = host.cpu_times()
    try:
        nf0, nf1 = builder.instance(name, "nf0"), builder.instance(name, "nf1")
        cfg = nf0.config()
        progress(f"synthesising {flows:,} NAT connections")
        tabs = synth_nat(flows, POOL, cfg.port_lo, cfg.port_hi)
        res["fill_s"] = fill(nf0, tabs)
        res["fill_entries"] = sum(len(k) for k, _ in tabs.values())
        progress(f"filled nf0: {res['fill_entries']:,} entries in {res['fill_s']:.2f} s (batch update)")
        c0 = AgentClient(name, "nf0", timeout=600)
        c1 = AgentClient(name, "nf1", timeout=600)
        runs, piped = [], []
        for r in range(reps):
            # the legs one after the other (each timed alone), then overlapped: the same run
            for kind, out in (("sequential", runs), ("pipelined", piped)):
                c1.delete()              # import into empty maps every time
                progress(f"push nf0 -> nf1 ({kind}), run {r + 1}/{reps}")
                p = c0.push("nf1", parallel=parallel, pipelined=kind == "pipelined")
                if p["failed"]:
                    raise NfxError(f"import into nf1 failed: {p['failed'][:3]}")
                out.append(p)
        entries = runs[0]["entries"]

        def phase(key, of=runs):
            secs = [x[key] for x in of]
            med = statistics.median(secs)
            return {"entries": entries, "seconds": med, "entries_per_s": entries / med if med else None,
                    "runs_s": secs}
        res["entries"] = entries
        res["bytes"] = runs[0]["bytes"]
        res["chunks"] = runs[0]["chunks"]
        res["export"] = phase("export_s")
        res["transfer"] = phase("transfer_s")
        res["import"] = phase("import_s")
        res["push_sequential"] = phase("total_s")
        res["push_total"] = phase("total_s", piped)
        res["push_total"]["pipelined"] = True
        slowest = max(res["export"]["seconds"], res["transfer"]["seconds"], res["import"]["seconds"])
        res["push_total"]["over_slowest_leg"] = res["push_total"]["seconds"] / slowest
        res["push_total"]["speedup_over_sequential"] = res["push_sequential"]["seconds"] / res["push_total"]["seconds"]
        res["transfer"]["mbytes_per_s"] = res["bytes"] / res["transfer"]["seconds"] / 1e6
        # what the CPUs allow: the export's and the import's CPU time (both agents, every thread,
        # kernel time included) shared out over the machine's CPUs; no overlap can beat it
        cpus = len(os.sched_getaffinity(0))
        cpu_s = statistics.median(x["export_cpu_s"] + x["import_cpu_s"] for x in runs)
        res["cpu_bound"] = {"cpus": cpus, "export_cpu_s": statistics.median(x["export_cpu_s"] for x in runs),
                            "import_cpu_s": statistics.median(x["import_cpu_s"] for x in runs),
                            "seconds": cpu_s / cpus, "entries_per_s": entries * cpus / cpu_s if cpu_s else None}
        res["push_total"]["over_cpu_bound"] = res["push_total"]["seconds"] / res["cpu_bound"]["seconds"]

        progress("the kernel's own cost an entry (batch lookup, batch update)")
        res["kernel_floor"] = kernel_floor(nf0)
        res["steal_pct"] = host.steal_pct(host0, host.cpu_times())     # the pushes' and the floor's

        progress("verifying nf1 == nf0")
        a, b = c0.get(), c1.get()
        cmp = compare(a, b)
        res["verify"] = {"same": all(v["same"] for v in cmp.values()), "tables": cmp}
        del a, b

        progress(f"per-entry baseline on {min(sample, flows):,} entries of nat_fwd")
        s = min(sample, flows)
        n, secs = per_entry_export(nf0.maps["nat_fwd"], s)
        res["per_entry_export"] = {"sample": n, "sample_s": secs, "entries_per_s": n / secs,
                                   "extrapolated_s": entries * secs / n}
        k, v = tabs["nat_fwd"]
        n, secs = per_entry_import(nf1.maps["nat_fwd"], k[:s], v[:s])   # the same values: state unchanged
        res["per_entry_import"] = {"sample": n, "sample_s": secs, "entries_per_s": n / secs,
                                   "extrapolated_s": entries * secs / n}
        res["speedup"] = {"export": res["export"]["entries_per_s"] / res["per_entry_export"]["entries_per_s"],
                          "import": res["import"]["entries_per_s"] / res["per_entry_import"]["entries_per_s"]}
        c0.close()
        c1.close()
    finally:
        if not keep and registry.path(name).exists():
            progress(f"testbed {name} down")
            builder.down(name)
    return res
