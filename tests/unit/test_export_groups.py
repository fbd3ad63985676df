"""Which tables each export thread reads (StateOps._export_groups): one table a thread when
parallel, so a NAT's two per-flow tables and its ports overlap on the CPUs; all in one
otherwise, or when there is a single table."""
from types import SimpleNamespace

from nfx.agent.ops_state import StateOps
from nfx.state.tables import SCOPES


def groups(kind, scopes, parallel):
    return StateOps._export_groups(SimpleNamespace(kind=kind), scopes, parallel)


def test_one_table_a_thread_when_parallel():
    assert groups("nat", SCOPES, True) == [("nat_fwd",), ("nat_rev",), ("nat_ports",), ("nat_cursor",)]
    assert groups("nat", ("per-flow",), True) == [("nat_fwd",), ("nat_rev",)]


def test_one_thread_otherwise():
    assert groups("nat", SCOPES, False) == [("nat_fwd", "nat_rev", "nat_ports", "nat_cursor")]
    assert groups("ids", ("per-flow",), True) == [("ids_flows",)]
