"""`nfx cluster up --clusters`: which instances form which cluster, and clear refusals."""
import pytest

from nfx.cluster.sharing import check_clusters, in_force, parse_clusters
from nfx.errors import BadInput

NFS = ["nf0", "nf1", "nf2", "nf3"]


def test_parse():
    assert parse_clusters("nf0,nf1/nf2,nf3", NFS) == {"c0": ["nf0", "nf1"], "c1": ["nf2", "nf3"]}
    assert parse_clusters(" nf0 , nf2 /", NFS) == {"c0": ["nf0", "nf2"]}


@pytest.mark.parametrize("text, why", [("nf0,nf9", "nf9' is not an instance"), ("nf0,nf1/nf1", "nf1 is in two"),
                                       ("/", "no clusters")])
def test_refusals(text, why):
    with pytest.raises(BadInput, match=why):
        parse_clusters(text, NFS)


def test_in_force_prefers_what_shares():
    rec = {"clusters": {"c0": NFS}, "sharing": {"clusters": {"c0": ["nf0"], "c1": ["nf1"]}}}
    assert in_force(rec) == {"c0": ["nf0"], "c1": ["nf1"]}
    assert in_force({"clusters": {"c0": NFS}}) == {"c0": NFS}
    with pytest.raises(BadInput):
        check_clusters({"c0": ["nf0"], "c1": ["nf0"]}, NFS)


def test_a_loopback_etcd_is_refused_before_anything():
    from nfx.cluster import manage
    with pytest.raises(BadInput, match="loopback"):
        manage.up("nosuchtb", etcd_url="http://127.0.0.1:2379")
