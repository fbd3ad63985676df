"""Checkpoint/restore through the agents: a live TCP connection through the NAT (h1 -> h2 on the
sharp testbed) keeps working when nf0's state is exported to a file, imported into nf1 (a fresh
instance) and both switches steer the hosts' traffic to nf1 instead of nf0."""
import socket
import struct
import threading
import time
from pathlib import Path

from nfx.agent.client import AgentClient
from nfx.control.switch import Match, Rule, Switch
from nfx.loader import netns
from nfx.state import ops
from tests.netns.tbutil import nfx_json, running_testbed

PORT = 6100
BLOCK = 1000


def pattern(offset: int, n: int) -> bytes:
    return bytes((offset + i) % 251 for i in range(n))


class Stream:
    """h1 sends a numbered byte pattern, h2 checks it and echoes it, h1 checks the echo."""

    def __init__(self, h1_ns: str, h2_ns: str):
        with netns.enter(h2_ns):
            self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("10.0.2.2", PORT))
        self.srv.listen(1)
        with netns.enter(h1_ns):
            self.cli = socket.socket()
        self.cli.settimeout(10)
        self.cli.connect(("10.0.2.2", PORT))
        self.srv.settimeout(10)
        self.conn, self.peer = self.srv.accept()
        self.conn.settimeout(10)
        self.sent = self.server_got = self.echoed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._serve, self._read)]
        for t in self.threads:
            t.start()

    def _send(self):
        try:
            while not self.stop.is_set():
                self.cli.sendall(pattern(self.sent, BLOCK))
                self.sent += BLOCK
                time.sleep(0.002)
            self.cli.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.errors.append(f"client send: {e!r}")

    def _serve(self):
        try:
            while True:
                data = self.conn.recv(65536)
                if not data:
                    break
                if data != pattern(self.server_got, len(data)):
                    self.errors.append(f"server: stream corrupt at byte {self.server_got}")
                    return
                self.server_got += len(data)
                self.conn.sendall(data)
            self.conn.close()
        except OSError as e:
            self.errors.append(f"server: {e!r}")

    def _read(self):
        try:
            while True:
                data = self.cli.recv(65536)
                if not data:
                    break
                if data != pattern(self.echoed, len(data)):
                    self.errors.append(f"client: echo corrupt at byte {self.echoed}")
                    return
                self.echoed += len(data)
        except OSError as e:
            self.errors.append(f"client recv: {e!r}")

    def finish(self, timeout=15):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        self.cli.close()
        self.srv.close()


def conn_counters(c: AgentClient, key) -> tuple[int, int, dict]:
    """(pkts out, pkts in) of one NAT connection, and its public side, through an agent."""
    fwd = [r for ch in c.get(("per-flow",), f"proto=tcp sport={key['sport']} dport={PORT}")
           for r in ops.records(ch)]
    out = {r["table"]: r["value"] for r in fwd}
    return out["nat_fwd"]["pkts"], out["nat_rev"]["pkts"], out["nat_fwd"]["peer"]


def test_tcp_connection_survives_checkpoint_restore(tmp_path: Path):
    with running_testbed("sharp", "nat", instances=2) as rec:
        name = rec["name"]
        nodes = rec["nodes"]
        # move nf0's port allocator on, so a fresh nf1 would hand out another public port and
        # h2 would answer the rewritten segments with a reset: only nf0's state keeps the
        # connection alive on nf1
        with AgentClient(name, "nf0") as c0:
            [cur] = c0.get(("all-flows",))
            assert cur.table == "nat_cursor"
            cur.values = struct.pack(f"<{cur.ncpu}Q", *([5000] * cur.ncpu))
            assert c0.put([cur])["failed"] == []
        s = Stream(nodes["h1"]["ns"], nodes["h2"]["ns"])
        try:
            sport = s.cli.getsockname()[1]
            key = {"sport": sport}
            time.sleep(0.5)
            assert s.errors == [] and s.echoed > 0
            c0, c1 = AgentClient(name, "nf0"), AgentClient(name, "nf1")
            assert c1.get(("per-flow",)) == []           # nf1 is fresh

            # checkpoint nf0 to a file, restore it into nf1, while the connection runs through nf0
            f = tmp_path / "nf0.state"
            e = nfx_json("state", "export", "--name", name, "--instance", "nf0", "-o", str(f))
            assert e["entries"] >= 3 and f.exists()
            i = nfx_json("state", "import", "--name", name, "--instance", "nf1", str(f))
            assert i["failed"] == [] and i["entries"] == e["entries"]
            _, _, pub1 = conn_counters(c1, key)
            _, _, pub0 = conn_counters(c0, key)
            assert pub1 == pub0 and pub0["dst"] == s.peer[0] and pub0["dport"] == s.peer[1]
            assert (s.peer[1] - 20000) % 20000 >= 5000          # not where a fresh allocator starts

            # steer both hosts' traffic to nf1, above the default host -> nf0 rules
            for sw, host in (("si", "h1"), ("so", "h2")):
                sw_ = Switch.open(sw, nodes[sw]["ns"], Path(nodes[sw]["pin"]))
                sw_.add_wild(Match(in_port=host), Rule(output=["nf1"]), prio=500)
                sw_.close()
            t_switch = time.monotonic()
            at_switch = s.server_got
            out0_a, in0_a, _ = conn_counters(c0, key)
            out1_a, in1_a, _ = conn_counters(c1, key)
            time.sleep(1.0)
            out0_b, in0_b, _ = conn_counters(c0, key)
            out1_b, in1_b, _ = conn_counters(c1, key)
        finally:
            s.finish()
        assert s.errors == [], s.errors                 # no reset, no corruption on either side
        assert s.server_got == s.sent == s.echoed       # every byte arrived, and its echo
        assert s.server_got - at_switch > 100 * BLOCK   # ... also the ones after the switch-over
        # nf1 carries the connection now, both ways; nf0 saw at most what was in flight
        assert out1_b - out1_a > 100 and in1_b - in1_a > 100
        assert out0_b - out0_a < 20 and in0_b - in0_a < 20
        assert time.monotonic() - t_switch > 1.0
        c0.close()
        c1.close()
