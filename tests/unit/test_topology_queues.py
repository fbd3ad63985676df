"""Topology files: `queues` (rx/tx queues of every data-plane veth), 1 by default, 1..16, an
override from the CLI, and BadInput messages that say where the bad value came from."""
import pytest

from nfx.errors import BadInput
from nfx.testbed import topology

from .topofile import write_topology

BASE = {
    "nodes": {"h1": {"role": "host", "addr": "10.0.1.2/24", "gateway": "10.0.1.1"},
              "h2": {"role": "host", "addr": "10.0.2.2/24"}, "nf{i}": {"role": "nf"}},
    "links": [["h1", "nf{i}"], ["nf{i}", "h2"]],
    "inside": "10.0.1.0/24", "pool": "10.0.2.100-10.0.2.103",
}


def write(tmp_path, **extra):
    return str(write_topology(tmp_path, BASE, **extra))


def test_one_queue_by_default():
    assert topology.load("chain").queues == 1
    assert topology.load("sharp").queues == 1


def test_the_file_sets_queues_and_the_cli_overrides_them(tmp_path):
    p = write(tmp_path, queues=4)
    assert topology.load(p).queues == 4
    assert topology.load(p, queues=2).queues == 2
    assert topology.load("chain", queues=16).queues == 16
    assert topology.MAX_QUEUES == 16


@pytest.mark.parametrize("bad", [0, 17, -1, 2.0, "2", True, None, [2]])
def test_bad_queues_in_a_file_name_the_file(tmp_path, bad):
    p = write(tmp_path, queues=bad)
    with pytest.raises(BadInput, match=r"t\.json: queues is an integer from 1 to 16.*not " + __import__("re").escape(repr(bad))):
        topology.load(p)


@pytest.mark.parametrize("bad", [0, 17, -3])
def test_bad_queues_from_the_cli_name_the_option(bad):
    with pytest.raises(BadInput, match=f"--queues: queues is an integer from 1 to 16.*not {bad}"):
        topology.load("chain", queues=bad)
