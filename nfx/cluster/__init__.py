"""Clusters of NF instances (issue 13). globalstate.py: a testbed's global state in etcd (membership
under leases, NAT pool ownership by CAS, counters merged eventually, strong counters). Sits above
nfx.agent in the import order: it may use nfx.etcd, nfx.state and nfx.agent, nothing above."""
from .globalstate import GlobalState

__all__ = ["GlobalState"]
