"""The etcd client against a real etcd (LocalEtcd on free ports): keys, prefixes, transactions with
compare-and-swap, leases that expire unless kept alive, watches, and the nfx errors a dead or
missing etcd gives."""
import os
import threading
import time

import pytest

from nfx import errors as E
from nfx.etcd import Compare, Etcd, KeepAlive, LocalEtcd, Op, Watch, find_etcd, prefix_end

from .etcd_fixture import etcd, local_etcd  # noqa: F401  (fixtures)


def test_put_get_range_delete(etcd):
    assert etcd.get("/t/a") is None
    r1 = etcd.put("/t/a", "1")
    r2 = etcd.put(b"/t/b", b"\x00\xff")
    etcd.put("/u/c", "x")
    assert r2 == r1 + 1
    assert etcd.get("/t/a") == (b"1", r1)
    assert etcd.range("/t/") == {"/t/a": b"1", "/t/b": b"\x00\xff"}
    etcd.put_json("/t/j", {"b": [1, 2], "a": "é"})
    assert etcd.get_json("/t/j") == {"b": [1, 2], "a": "é"}
    assert etcd.get_json("/t/none", default={}) == {}
    assert etcd.delete("/t/", prefix=True) == 3
    assert etcd.range("/t/") == {} and etcd.get("/u/c")[0] == b"x"
    assert etcd.delete("/u/c") == 1 and etcd.delete("/u/c") == 0


def test_prefix_end():
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


def test_txn_create_if_absent_and_swap_if_unchanged(etcd):
    assert etcd.create("/k", "first")
    assert not etcd.create("/k", "second")
    v, rev = etcd.get("/k")
    assert v == b"first"
    assert etcd.swap("/k", "swapped", rev)
    assert not etcd.swap("/k", "stale", rev)            # the key changed since rev
    assert etcd.get("/k")[0] == b"swapped"
    # the failure branch runs and its reads come back
    r = etcd.txn([Compare.value_is("/k", "nope")], [Op.delete("/k")], [Op.get("/k")])
    assert not r.succeeded and r.kvs(0)[0].value == b"swapped"
    r = etcd.txn([Compare.value_is("/k", "swapped")], [Op.delete("/k"), Op.put("/k2", "v")])
    assert r.succeeded and etcd.get("/k") is None and etcd.get("/k2")[0] == b"v"


def test_update_from_threads_loses_nothing(etcd):
    def add():
        for _ in range(15):
            etcd.update("/n", lambda cur: str(int(cur or 0) + 1))
    ts = [threading.Thread(target=add) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert etcd.get("/n")[0] == b"60"


def test_update_gives_up_when_fn_raises(etcd):
    etcd.put("/x", "1")

    def refuse(cur):
        raise E.AlreadyExists("no")
    with pytest.raises(E.AlreadyExists):
        etcd.update("/x", refuse)
    assert etcd.get("/x")[0] == b"1"


def test_lease_expires_and_takes_its_keys(etcd):
    lease, ttl = etcd.grant(1)
    assert ttl == 1
    etcd.put("/l/a", "x", lease=lease)
    assert etcd.get_kv("/l/a").lease == lease
    t0 = time.monotonic()
    while etcd.get("/l/a") is not None and time.monotonic() - t0 < 5:
        time.sleep(0.1)
    assert etcd.get("/l/a") is None, "the key outlived its 1 s lease by 5 s"
    assert etcd.keepalive_once(lease) == 0 and etcd.time_to_live(lease) == -1
    with pytest.raises(E.NotFound, match="lease not found"):
        etcd.put("/l/b", "x", lease=lease)


def test_keepalive_keeps_a_lease_and_revoke_ends_it(etcd):
    lease, ttl = etcd.grant(1)
    etcd.put("/l/k", "x", lease=lease)
    ka = KeepAlive(etcd, lease, ttl)
    try:
        time.sleep(2.5)                                  # 2.5 TTLs
        assert etcd.get("/l/k") is not None and ka.alive and ka.refreshes >= 3
    finally:
        ka.stop(revoke=True)
    assert etcd.get("/l/k") is None                     # revoked: gone at once
    assert not etcd.revoke(lease)


def test_keepalive_notices_a_lost_lease(etcd):
    lease, ttl = etcd.grant(1)
    lost = threading.Event()
    ka = KeepAlive(etcd, lease, ttl, on_lost=lambda _: lost.set())
    etcd.revoke(lease)
    assert lost.wait(3) and ka.lost and not ka.alive
    ka.stop()


def test_watch_sees_puts_and_deletes(etcd):
    seen, got3 = [], threading.Event()

    def cb(ev):
        seen.append((ev.type, ev.key, ev.value))
        if len(seen) == 3:
            got3.set()
    w = Watch(etcd, "/w/", cb)
    try:
        etcd.put("/w/a", "1")
        etcd.put("/other", "x")
        etcd.put("/w/a", "2")
        etcd.delete("/w/a")
        assert got3.wait(3)
    finally:
        w.stop()
    assert seen == [("PUT", b"/w/a", b"1"), ("PUT", b"/w/a", b"2"), ("DELETE", b"/w/a", b"")]
    assert w.error is None and not w.alive


def test_watch_reports_etcd_going_away(local_etcd):
    c = local_etcd.client()
    errs = []
    w = Watch(c, "/w/", lambda ev: None, on_error=errs.append)
    local_etcd.kill()
    w._t.join(5)
    assert not w.alive and isinstance(w.error, E.EtcdDown) and errs == [w.error]


def test_dead_etcd_is_etcd_down_with_its_url(local_etcd):
    url = local_etcd.url
    c = Etcd(url, timeout=2)
    c.put("/a", "1")
    local_etcd.stop()
    assert not os.path.exists(local_etcd.dir)            # its data dir went with it
    for op in (lambda: c.get("/a"), lambda: c.put("/a", "2"), lambda: c.grant(1), c.health):
        with pytest.raises(E.EtcdDown, match=f"etcd at {url} does not answer") as e:
            op()
        assert url in e.value.hint and e.value.exit_code == 3


def test_a_silent_server_is_a_timeout():
    import socket
    with socket.socket() as s:                           # accepts (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        c = Etcd(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.3)
        with pytest.raises(E.Timeout, match="no answer within 0.3 s"):
            c.get("/a")


def test_bad_url_and_bad_request():
    with pytest.raises(E.BadInput):
        Etcd("https://example:2379")
    with pytest.raises(E.BadInput):
        Etcd("http://127.0.0.1:1").put("/a", 3)


def test_etcd_refuses_bad_requests(etcd):
    with pytest.raises(E.BadInput, match="HTTP 400"):
        etcd.call("/v3/kv/put", {"key": ""})             # etcd: key is not provided


def test_missing_binary_says_run_bootstrap(monkeypatch, tmp_path):
    monkeypatch.setenv("NFX_ETCD", str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    if os.access("/usr/bin/etcd", os.X_OK):
        import nfx.etcd.server as S
        real = os.path.isfile
        monkeypatch.setattr(S.os.path, "isfile", lambda p: p != "/usr/bin/etcd" and real(p))
    with pytest.raises(E.KernelFeature, match="no etcd binary") as e:
        find_etcd()
    assert "scripts/bootstrap.sh" in e.value.hint and e.value.exit_code == 6
    with pytest.raises(E.KernelFeature):
        LocalEtcd()


def test_local_etcd_stop_ends_the_process(local_etcd):
    pid = local_etcd.proc.pid
    local_etcd.stop(grace_s=3)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    local_etcd.stop()                                    # idempotent


def test_local_etcd_dies_with_a_killed_parent(tmp_path):
    """A test run killed before it can stop() its etcd does not leave etcd running."""
    import json
    import signal
    import subprocess
    import sys
    code = ("import json, sys, time\nfrom nfx.etcd import LocalEtcd\ne = LocalEtcd()\n"
            "print(json.dumps(e.info()), flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    info = None
    try:
        info = json.loads(p.stdout.readline())
        assert Etcd(info["url"]).health()
        p.send_signal(signal.SIGKILL)                    # no atexit, no stop()
        p.wait(5)
        t0 = time.monotonic()
        while os.path.exists(f"/proc/{info['pid']}") and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{info['pid']}"), "etcd outlived its killed parent"
        with pytest.raises(E.EtcdDown):
            Etcd(info["url"], timeout=1).health()
    finally:
        p.kill()
        p.wait(5)
        if info:
            LocalEtcd.stop_detached(info)                # its data dir (and etcd, had it lived)
            assert not os.path.exists(info["dir"])
