"""`nfx cluster up --clusters`: which instances form which cluster, and clear refusals."""
import pytest

from nfx.cluster.sharing import DEFAULT_BATCH, check_clusters, parse_batch, parse_clusters
from nfx.errors import BadInput
from nfx import registry

NFS = ["nf0", "nf1", "nf2", "nf3"]


def test_parse():
    assert parse_clusters("nf0,nf1/nf2,nf3", NFS) == {"c0": ["nf0", "nf1"], "c1": ["nf2", "nf3"]}
    assert parse_clusters(" nf0 , nf2 /", NFS) == {"c0": ["nf0", "nf2"]}


@pytest.mark.parametrize("text, why", [("nf0,nf9", "nf9' is not an instance"), ("nf0,nf1/nf1", "nf1 is in two"),
                                       ("/", "no clusters")])
def test_refusals(text, why):
    with pytest.raises(BadInput, match=why):
        parse_clusters(text, NFS)


CLUSTERS = {"c0": ["nf0", "nf1"], "c1": ["nf2"], "c2": ["nf3"]}


def test_batch_per_cluster():
    assert parse_batch(30, CLUSTERS) == {"c0": 30, "c1": 30, "c2": 30}
    assert parse_batch("c1=10", CLUSTERS) == {"c0": DEFAULT_BATCH, "c1": 10, "c2": DEFAULT_BATCH}
    assert parse_batch("50, c2=5", CLUSTERS) == {"c0": 50, "c1": 50, "c2": 5}
    assert parse_batch("c0=7,100", CLUSTERS) == {"c0": 7, "c1": 100, "c2": 100}   # order does not matter


@pytest.mark.parametrize("text, why", [("c9=10", "no cluster 'c9'"), ("ten", "whole number"), ("c0=x", "whole number"),
                                       ("0", "1..1048576"), ("c1=2000000", "1..1048576")])
def test_batch_refusals(text, why):
    with pytest.raises(BadInput, match=why):
        parse_batch(text, CLUSTERS)


def test_in_force_prefers_what_shares():
    rec = {"clusters": {"c0": NFS}, "sharing": {"clusters": {"c0": ["nf0"], "c1": ["nf1"]}}}
    assert registry.Testbed(rec).clusters_in_force() == {"c0": ["nf0"], "c1": ["nf1"]}
    assert registry.Testbed({"clusters": {"c0": NFS}}).clusters_in_force() == {"c0": NFS}
    with pytest.raises(BadInput):
        check_clusters({"c0": ["nf0"], "c1": ["nf0"]}, NFS)


def test_a_loopback_etcd_is_refused_before_anything():
    from nfx.cluster import manage
    with pytest.raises(BadInput, match="loopback"):
        manage.up("nosuchtb", etcd_url="http://127.0.0.1:2379")
