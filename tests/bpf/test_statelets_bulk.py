"""The bulk statelet path on streams the real NAT and IDS programs write (BPF_PROG_TEST_RUN):
stbatch.poll_batch reads the mmapped ring in batches; replay.apply (bulk) and replay.apply_slow (one at a
time) agree with each other and with the live maps, on a snapshot from before mirroring and on
one taken mid-stream; a StreamApplier installs the snapshot into a second instance and replays
the batches onto its maps, which then equal the source's. NAT streams include evictions, port
reclaims and re-created connections; IDS streams a host updated by many flows. And
`nfx bench statelets` runs small, checks its own result and refuses bad input."""
import json
import subprocess
import sys
import time

import pytest
from scapy.all import IP, TCP, Raw, UDP

from nfx import layout as L
from nfx.nfs.ids import IDS, IdsConfig
from nfx.nfs.nat import NAT, NatConfig
from nfx.paths import REPO
from nfx.state import ops
from nfx.state import replay as R
from nfx.state.stbatch import poll_batch
from nfx.state import statelets as S
from nfx.state.fastapply import StreamApplier
from tests.bpf.test_statelets import eth, match_all, run
from tests.scratch import scratch_nf

STATE = ("per-flow", "multi-flow")
NAT_CFG = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.100", port_lo=30000, port_hi=30003,
                    timeouts_s={"udp": 0.05, "tcp": 0.05, "tcp_closed": 0.05, "icmp": 0.05})
IDS_CFG = IdsConfig(scan_threshold=5)


def _pair(cls, tag, cfg):
    with scratch_nf(cls, tag + "s", cfg, max_flows=4096) as src, scratch_nf(cls, tag + "d", cfg, max_flows=4096) as dst:
        src.cfg = cfg
        src.reader = S.StateletReader(src)
        try:
            yield src, dst
        finally:
            src.reader.close()


@pytest.fixture(scope="module")
def nat():
    yield from _pair(NAT, "tbn", NAT_CFG)


@pytest.fixture(scope="module")
def ids():
    yield from _pair(IDS, "tbi", IDS_CFG)


def udp(src, sport, dport=53, payload=b"p"):
    return eth() / IP(src=src, dst="10.0.2.2") / UDP(sport=sport, dport=dport) / Raw(payload)


def check(src, dst, snaps, batches):
    """Every snapshot + every batch, three ways, equals the live state; so does dst."""
    live = list(ops.export(src, STATE))
    recs = [r for b in batches for r in b.raw_records()]
    for snap in snaps:
        fast, slow = R.Tables.from_chunks(snap), R.Tables.from_chunks(snap)
        rf, rs = R.apply(fast, batches[0]), R.apply_slow(slow, recs[:batches[0].records])
        for b in batches[1:]:
            R.apply(fast, b, rf)
        R.apply_slow(slow, recs[batches[0].records:], rs)
        assert ops.diff(fast.chunks(), live)["same"], ops.diff(fast.chunks(), live)
        assert ops.diff(slow.chunks(), live)["same"]
        counted = ("applied", "stale", "deleted", "absent_deletes", "statelets", "records")
        assert {k: rf[k] for k in counted} == {k: rs[k] for k in counted}
    for m in ("nfx_marks",):
        dst.maps[m].clear()
    sa = StreamApplier(dst)
    assert not sa.install(snaps[0])["failed"]
    for b in batches:
        sa.apply(b)
    assert ops.diff(list(ops.export(dst, STATE)), live)["same"]
    return sa.totals


def test_nat_stream_with_evictions_and_recreations(nat):
    src, dst = nat
    for i in range(2):                                 # state from before mirroring
        run(src, udp(f"10.0.1.{2 + i}", 100 + i))
    src.reader.poll_raw()
    src.gate.put_filter(0, match_all())
    snaps = [list(ops.export(src, STATE))]
    batches = []
    for r in range(6):
        for i in range(6):                             # 6 flows, 4 ports: idle ones are evicted
            run(src, udp(f"10.0.1.{2 + i % 3}", 100 + i, payload=b"x" * (r + i)))
            if r == 2 and i == 2:
                snaps.append(list(ops.export(src, STATE)))     # a snapshot mid-stream
        run(src, eth() / IP(src="10.0.1.2", dst="10.0.2.2") / TCP(sport=4000, dport=80, flags="SA"[r % 2]))
        batches.append(poll_batch(src.reader))
        time.sleep(0.06 if r % 2 else 0)
    assert src.stats().get("r_statelet_ring_full", 0) == 0
    tot = check(src, dst, snaps, batches)
    assert tot["deleted"] > 0 and tot["statelets"] == sum(map(len, batches))


def test_ids_hosts_updated_by_many_flows(ids):
    src, dst = ids
    src.add_signature(9, b"BAD", proto="udp")
    for h in range(3):
        run(src, udp(f"10.0.1.{2 + h}", 1, 60))
    src.reader.poll_raw()
    src.gate.put_filter(0, match_all())
    snaps = [list(ops.export(src, STATE))]
    batches = []
    for r in range(4):
        for f in range(40):                            # 40 flows per round over 3 hosts, scans
            run(src, udp(f"10.0.1.{2 + f % 3}", 1000 + f, 60 + f % 11, b"BAD" if f % 7 == r else b"ok"))
        if r == 1:
            snaps.append(list(ops.export(src, STATE)))
        batches.append(poll_batch(src.reader))
    assert max(len(b) for b in batches) > 40
    check(src, dst, snaps, batches)
    host = src.maps["ids_hosts"].get(L.u32.from_buffer_copy(bytes([10, 0, 1, 2])))
    assert host.flows >= 14 and host.scan_alerted


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "nfx", "bench", "statelets", *args], capture_output=True,
                          text=True, cwd=str(REPO), timeout=300)


@pytest.mark.parametrize("kind", ["nat", "ids"])
def test_bench_statelets_small(kind):
    p = _bench("--nf", kind, "--flows", "400", "--packets", "3", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    legs = {x["leg"]: x for x in r["legs"]}
    assert set(legs) == {"ring", "reader", "apply", "apply (Tables)"}
    assert r["same"] and legs["apply"]["same"] and legs["apply (Tables)"]["same"]
    ring, rdr, app = legs["ring"], legs["reader"], legs["apply"]
    assert ring["drops"] == rdr["drops"] == 0
    assert ring["records"] == ring["taken_records"] == rdr["records"] == 400 * 3   # every packet changed state
    assert ring["statelets"] == rdr["statelets"] == app["statelets"] > ring["records"]
    assert app["report"]["applied"] + app["report"]["stale"] == app["statelets"] and app["report"]["orphans"] == 0
    assert rdr["walks"] == {"vector": rdr["batches"], "loop": 0}   # real headers found vectorised
    for x in r["legs"]:
        assert x["statelets_per_s"] > 0 and x["meets_1m"] == (x["statelets_per_s"] >= 1e6)


def test_bench_statelets_refuses_bad_input():
    p = _bench("--nf", "vpn", "--flows", "10")
    assert p.returncode == 2 and "nat or ids" in p.stderr
    p = _bench("--flows", "1")
    assert p.returncode == 2 and "--flows" in p.stderr
