"""What each instance holds, flow by flow, for the planner: its per-flow table read through its
agent (the NAT's nat_fwd, keyed by the inside flow; the IDS's ids_flows, keyed as the flow's
packets came), and each flow's pps from its packet count's change since the last read. A flow
read for the first time gets a share of its instance's unexplained pps in proportion to its
packets so far. A flow's count moves with its state, so a flow that changed instance between
two reads keeps its rate."""
import time

import numpy as np

from .. import layout as L
from ..agent.client import AgentClient
from ..errors import BadInput
from ..nfs.ids import IDS
from ..nfs.nat import NAT

# kind -> (per-flow table, its value's layout, bytes a flow holds in all the per-flow tables)
FLOW_TABLES = {"nat": ("nat_fwd", L.NatEntry, NAT.FLOW_BYTES), "ids": ("ids_flows", L.IdsFlow, IDS.FLOW_BYTES)}


def flows_of(chunks, table: str, value_layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys as bytes, source addresses as host-order ints, packet counts) of `table`'s entries."""
    kdt, vdt = np.dtype(L.FlowKey), np.dtype(value_layout)
    keys, addrs, pkts = [], [], []
    for c in chunks:
        if c.table != table or not c.count:
            continue
        if c.key_size != kdt.itemsize or c.value_size != vdt.itemsize or c.ncpu != 1:
            raise BadInput(f"{table}: entries of {c.key_size}+{c.value_size} bytes, not the "
                           f"{kdt.itemsize}+{vdt.itemsize} this nfx reads")
        k = np.frombuffer(c.keys, kdt, c.count)
        v = np.frombuffer(c.values, vdt, c.count)
        keys.append(np.frombuffer(c.keys, f"V{kdt.itemsize}", c.count))
        addrs.append(k["saddr"].astype(np.uint32).byteswap())      # network order in the key
        pkts.append(v["pkts"].astype(np.uint64))
    if not keys:
        return np.zeros(0, "V16"), np.zeros(0, np.uint32), np.zeros(0, np.uint64)
    return np.concatenate(keys), np.concatenate(addrs), np.concatenate(pkts)


class Inventory:
    def __init__(self, testbed: str, kind: str):
        if kind not in FLOW_TABLES:
            raise BadInput(f"the orchestration loop knows the flows of {', '.join(FLOW_TABLES)}, not {kind!r}")
        self.testbed, self.kind = testbed, kind
        self.table, self.layout, self.flow_bytes = FLOW_TABLES[kind]
        self.prev: dict[bytes, int] = {}          # flow key -> packets at the last read
        self.prev_t: float | None = None
        self.clients: dict[str, AgentClient] = {}
        self.read_s = 0.0                         # the last read's time, all instances

    def _client(self, instance: str) -> AgentClient:
        c = self.clients.get(instance)
        if c is None:
            c = self.clients[instance] = AgentClient(self.testbed, instance, timeout=30)
        return c

    def forget(self, instance: str) -> None:
        c = self.clients.pop(instance, None)
        if c is not None:
            c.close()

    def close(self) -> None:
        for n in list(self.clients):
            self.forget(n)

    def read(self, instances: list[str], pps: dict[str, float]) -> dict[str, list[tuple[int, float, int]]]:
        """{instance: [(source address, pps, state bytes), ...]} as views_from takes it."""
        t0 = time.monotonic()
        dt = t0 - self.prev_t if self.prev_t is not None else None
        now: dict[bytes, int] = {}
        out = {}
        for inst in instances:
            keys, addrs, pkts = flows_of(self._client(inst).get(scopes=["per-flow"]), self.table, self.layout)
            rates = np.zeros(len(keys))
            known = np.zeros(len(keys), bool)
            for i, (k, n) in enumerate(zip(keys.tolist(), pkts.tolist())):
                now[k] = n
                before = self.prev.get(k)
                if before is not None and dt:
                    rates[i] = max(0, n - before) / dt
                    known[i] = True
            # what the counts do not explain of the instance's pps, spread over its new flows
            rest = max(0.0, pps.get(inst, 0.0) - float(rates[known].sum()))
            new_pkts = pkts[~known].astype(float)
            if new_pkts.sum() > 0:
                rates[~known] = rest * new_pkts / new_pkts.sum()
            elif (~known).any():
                rates[~known] = rest / int((~known).sum())
            out[inst] = [(int(a), float(r), self.flow_bytes) for a, r in zip(addrs.tolist(), rates.tolist())]
        self.prev, self.prev_t = now, t0
        self.read_s = time.monotonic() - t0
        return out
