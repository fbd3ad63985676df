"""Topology files: the instance limit (tx devmap slots), clusters of NF instances (expanded like
nodes, every member an NF instance, none in two clusters) and the spread flag, with BadInput
messages that name the file."""
import json

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.testbed import topology

from .topofile import write_topology

BASE = {
    "nodes": {"h1": {"role": "host", "addr": "10.0.1.2/24", "gateway": "10.0.1.1"},
              "h2": {"role": "host", "addr": "10.0.2.2/24"},
              "si": {"role": "switch"}, "so": {"role": "switch"}, "nf{i}": {"role": "nf"}},
    "links": [["h1", "si"], ["si", "nf{i}"], ["nf{i}", "so"], ["so", "h2"]],
    "inside": "10.0.1.0/24", "pool": "10.0.2.100-10.0.2.103",
}


def write(tmp_path, **extra):
    return write_topology(tmp_path, BASE, **extra)


def test_the_cluster_topology_is_the_slides_setup():
    t = topology.load("cluster")
    assert t.instances == 12 and t.spread
    assert t.clusters == {f"c{c}": [f"nf{4 * c + i}" for i in range(4)] for c in range(3)}
    assert len(t.role("nf")) == 12 and set(t.role("switch")) == {"si", "so"}
    assert "cluster-state-management-slides.txt" in t.about


def test_the_instance_limit_follows_the_tx_slots(tmp_path):
    p = write(tmp_path)
    assert topology.MAX_INSTANCES == L.TX_SLOTS - 2 == 14
    assert len(topology.load(str(p), 14).role("nf")) == 14
    for n in (0, 15):
        with pytest.raises(BadInput, match="instances must be 1..14"):
            topology.load(str(p), n)


def test_no_clusters_no_spread_by_default(tmp_path):
    t = topology.load(str(write(tmp_path, instances=3)))
    assert t.clusters == {} and t.spread is False
    assert topology.load("sharp").clusters == {}


def test_members_expand_like_nodes(tmp_path):
    t = topology.load(str(write(tmp_path, instances=3, clusters={"all": ["nf{i}"]})))
    assert t.clusters == {"all": ["nf0", "nf1", "nf2"]}
    t = topology.load(str(write(tmp_path, instances=5, clusters={"a": ["nf0", "nf3"], "b": ["nf1"]})))
    assert t.clusters == {"a": ["nf0", "nf3"], "b": ["nf1"]}     # nf2, nf4 in none: allowed


@pytest.mark.parametrize("clusters,msg", [
    ({"a": ["nf0", "nf7"]}, r"cluster 'a' names 'nf7', which is no node, not an NF instance"),
    ({"a": ["si"]}, r"cluster 'a' names 'si', which is a switch, not an NF instance"),
    ({"a": ["h1"]}, r"which is a host"),
    ({"a": ["nf0", "nf1"], "b": ["nf1"]}, r"nf1 is in cluster 'a' and in cluster 'b'"),
    ({"a": ["nf{i}"], "b": ["nf2"]}, r"nf2 is in cluster 'a' and in cluster 'b'"),
    ({"a": ["nf0", "nf0"]}, r"cluster 'a' lists nf0 twice"),
    ({"a": []}, r"cluster 'a' needs a non-empty list"),
    ({"a": "nf0"}, r"cluster 'a' needs a non-empty list"),
    ({"a": [3]}, r"cluster 'a' needs a non-empty list"),
    (["nf0"], r"clusters maps a cluster name"),
])
def test_bad_clusters_name_the_file_and_the_fault(tmp_path, clusters, msg):
    p = write(tmp_path, instances=4, clusters=clusters)
    with pytest.raises(BadInput, match=msg) as e:
        topology.load(str(p))
    assert str(p) in str(e.value)


def test_fewer_instances_than_the_clusters_name_is_refused(tmp_path):
    with pytest.raises(BadInput, match="names 'nf6'"):
        topology.load("cluster", 6)
    assert len(topology.load("cluster", 14).role("nf")) == 14     # nf12, nf13 in no cluster


def test_spread_needs_a_link_from_every_switch_to_every_instance(tmp_path):
    raw_links = [["h1", "si"], ["si", "nf{i}"], ["nf{i}", "so"], ["so", "h2"], ["si", "sx"]]
    p = write(tmp_path, instances=2, spread=True, links=raw_links)
    raw = json.loads(p.read_text())
    raw["nodes"]["sx"] = {"role": "switch"}
    p.write_text(json.dumps(raw))
    with pytest.raises(BadInput, match="spread: switch sx has no link to nf0, nf1"):
        topology.load(str(p))
    with pytest.raises(BadInput, match="spread is true or false"):
        topology.load(str(write(tmp_path, spread="yes")))
    assert topology.load(str(write(tmp_path, spread=True))).spread
