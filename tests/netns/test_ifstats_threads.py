"""Interface counters shared between threads (nfx/loader/ifstats.py): a move's releases read the
egress rings' fill while its status reads them too. Two threads on one netlink socket once took
each other's answers and one waited forever; every read now holds the object's lock."""
import threading

from nfx.loader.ifstats import IfCounters, VethRing
from tests.scratch import Scratch


def test_two_threads_read_one_ring_without_hanging():
    s = Scratch("ifs")
    try:
        ns = s.ns("n")
        s.veth("ifsa", ns, "ifsb", ns)
        ring = VethRing("ifsa", ns)
        done, errors = [], []

        def reader():
            try:
                for _ in range(3000):
                    assert ring.fill() >= 0
                done.append(1)
            except Exception as e:            # noqa: BLE001 - said by the assert below
                errors.append(e)
        threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors and len(done) == 3, (errors, len(done))
        ring.close()
        c = IfCounters("ifsb", ns)
        assert c.tx_packets() >= 0 and c.ethtool("tx_queue_0_xdp_xmit")[0] >= 0
        c.close()
    finally:
        s.close()
