"""Instance names across joined testbeds (nfx/registry.py): nf1@B is instance nf1 of testbed B,
and each testbed writes the other's instances that way (issue 14, multi-host)."""
import pytest

from nfx import registry
from nfx.errors import BadInput


def test_split():
    assert registry.split_instance("nf1@B") == ("nf1", "B")
    assert registry.split_instance("nf1") == ("nf1", None)
    for bad in ("@B", "nf1@", "@"):
        with pytest.raises(BadInput, match="INSTANCE@TESTBED"):
            registry.split_instance(bad)


@pytest.mark.parametrize("name, home, viewer, seen", [
    ("nf0", "A", "A", "nf0"),          # A's own, to A
    ("nf0", "A", "B", "nf0@A"),        # A's own, to B
    ("nf1@B", "A", "B", "nf1"),        # B's, as A writes it, to B
    ("nf1@B", "A", "A", "nf1@B"),      # B's, to A
])
def test_view(name, home, viewer, seen):
    assert registry.view(name, home, viewer) == seen


def test_as_seen_by_an_agent():
    assert registry.as_seen_by("nf0", "A", "nf1@B") == "nf0@A"      # A's nf0, to B's nf1
    assert registry.as_seen_by("nf1@B", "A", "nf0") == "nf1@B"      # B's nf1, to A's nf0
    assert registry.as_seen_by("nf2", "A", "nf0") == "nf2"


def test_view_round_trips():
    for name in ("nf0", "nf7@B"):
        there = registry.view(name, "A", "B")
        assert registry.view(there, "B", "A") == name


def test_a_name_of_a_testbed_not_joined_is_refused():
    rec = registry.Testbed({"name": "A", "nodes": {}})
    with pytest.raises(BadInput, match="not joined to B"):
        registry.joined_node(rec, "nf1@B")
    with pytest.raises(BadInput, match="not joined to B"):
        registry.remote_instance(rec, "nf1@B")
    assert registry.remote_instance(rec, "nf1") is None
    assert rec.borrowed() == []


def test_join_refuses_a_bad_link_rate():
    from nfx.testbed import join
    for bad in (-1, 100_001):
        with pytest.raises(BadInput, match="rate-mbit"):
            join.join("a", "b", bad)
