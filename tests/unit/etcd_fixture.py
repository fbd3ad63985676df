"""A private etcd per test: free loopback ports, a temporary data dir, stopped even when the test
fails. A missing etcd binary fails the test with LocalEtcd's message (scripts/bootstrap.sh installs it)."""
import pytest

from nfx.etcd import LocalEtcd


@pytest.fixture
def local_etcd():
    # a lone member elects itself after one election timeout: 100 ms starts it in a third of the time
    e = LocalEtcd(heartbeat_ms=10, election_ms=100)
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def etcd(local_etcd):
    return local_etcd.client(timeout=5.0)
