"""etcd for nfx's global state: a standard-library client of etcd's v3 JSON gateway (client.py),
prefix watches (watch.py), and a private local etcd for tests and `nfx cluster up` (server.py).
A leaf package: it imports nothing from nfx but nfx.errors, so any layer may use it."""
from .client import KV, Compare, Etcd, KeepAlive, Op, TxnResult, prefix_end
from .server import LocalEtcd, find_etcd
from .watch import Event, Watch

__all__ = ["KV", "Compare", "Etcd", "Event", "KeepAlive", "LocalEtcd", "Op", "TxnResult", "Watch", "find_etcd",
           "prefix_end"]
