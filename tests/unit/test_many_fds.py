"""The waits of the test process's side (an agent coming up, a frame from an agent) work with
file descriptors past 1023: a suite's run holds hundreds of BPF objects' fds, and select()
refuses any fd past FD_SETSIZE."""
import os
import socket

from nfx.agent.client import AgentClient
from nfx.procs import agents


def _many(n=1100):
    return [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]


def test_agent_ready_wait_past_fd_1023():
    held = _many()
    try:
        r, w = os.pipe()
        assert r > 1023
        os.write(w, b"ready\n")
        rec = {"name": "t", "nodes": {"nf0": {"agent": {"pid": 1}}}}
        assert agents.wait_ready(rec, "nf0", None, r, timeout=2) == {"pid": 1}
        os.close(w)
    finally:
        for fd in held:
            os.close(fd)


def test_client_frame_wait_past_fd_1023():
    held = _many()
    a, b = socket.socketpair()
    try:
        assert a.fileno() > 1023
        c = AgentClient.__new__(AgentClient)
        c._conn, c._sock, c.timeout, c.instance = None, a, 1.0, "nf0"
        assert c.read_frame(wait=0.05) is None          # nothing came: None, no ValueError
    finally:
        a.close()
        b.close()
        for fd in held:
            os.close(fd)
