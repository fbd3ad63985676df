"""IDS on the SHarP testbed with real packets: a signature alert and a port-scan alert arrive
through the ring, and the inspected traffic still reaches h2 unchanged."""
import subprocess
import time

import pytest

from nfx.testbed import builder
from tests.netns.tbutil import py, running_testbed

RECEIVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999)); s.settimeout(5)
print(s.recvfrom(2048)[0].decode(), flush=True)
"""


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "ids", instances=1) as rec:
        yield rec


def test_signature_alert_and_delivery(tb):
    ids = builder.instance(tb["name"], "nf0")
    ids.add_signature(4242, b"EVIL-PAYLOAD", offset=4, proto="udp")
    rx = subprocess.Popen(["ip", "netns", "exec", tb["nodes"]["h2"]["ns"], "python3", "-c", RECEIVER],
                          stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        with ids.alerts() as reader:
            py(tb["nodes"]["h1"]["ns"], "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                        "s.sendto(b'xxxxEVIL-PAYLOAD!', ('10.0.2.2', 9999))")
            alerts = [a for a in reader.follow(timeout_s=2) if a.kind == "sig"][:1]
        delivered = rx.communicate(timeout=10)[0].strip()
    finally:
        rx.kill()
    assert delivered == "xxxxEVIL-PAYLOAD!"
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.sig_id, a.flow["src"], a.flow["dst"], a.flow["dport"]) == (4242, "10.0.1.2", "10.0.2.2", 9999)
    assert ids.sig_hits()[4242] == 1


def test_port_scan_alert(tb):
    ids = builder.instance(tb["name"], "nf0")
    threshold = ids.config().scan_threshold
    with ids.alerts() as reader:
        py(tb["nodes"]["h1"]["ns"], "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                    f"[s.sendto(b'probe', ('10.0.2.2', p)) for p in range(20000, 20000 + {threshold + 10})]")
        scans = [a for a in reader.follow(timeout_s=2) if a.kind == "scan"]
    assert len(scans) == 1
    assert scans[0].flow["src"] == "10.0.1.2" and scans[0].sig_id == threshold
    [host] = [h for h in ids.hosts() if h["addr"] == "10.0.1.2"]
    assert host["dports"] >= threshold + 10 and host["scan_alerted"]
