"""nfx bench dataplane, small: every path and size measured, the new ratios there and positive,
each XDP path's packets redirected by the program it is labelled with; the node's paths put back
as the testbed built it; and a bench that fails half way leaves nothing behind."""
import os
import subprocess
import sys

from nfx import registry
from nfx.bench import dataplane_paths as dpp
from nfx.loader import attach, netns
from tests.netns.tbutil import nfx_json, running_testbed

NEW_RATIOS = ("ratio_nat_over_xdp_forward", "ratio_xdp_over_nft", "ratio_ids_over_xdp_forward")


def _gone(name: str) -> bool:
    return (not registry.path(name).exists() and not registry.pin_root(name).exists()
            and not any(ns.startswith(name + "-") for ns in
                        (os.listdir(netns.NETNS_RUN) if os.path.isdir(netns.NETNS_RUN) else ())))


def test_bench_dataplane_small():
    r = nfx_json("bench", "dataplane", "--duration", "0.3", "--reps", "1", "--sizes", "64,300", "--pin", timeout=300)
    assert r["pin_cpu"] in os.sched_getaffinity(0) and 0 <= r["steal_pct"] <= 100
    assert r["traffic"] == r["transport"] == "loop"          # the default: XDP-born frames on any kernel
    assert [(b["requested_bytes"], b["frame_bytes"]) for b in r["sizes"]] == [(64, 66), (300, 300)]
    for block in [r] + r["sizes"]:
        for key in NEW_RATIOS + ("ratio_xdp_over_kernel_forward",):
            assert block[key] is not None and block[key] > 0, (key, block[key])
        assert list(block["results"]) == list(dpp.PATHS)
        for path, s in block["results"].items():
            assert s["rx_pps_median"] > 0 and len(s["rx_pps_runs"]) == 1, (path, s)
            assert s["lost_runs"] == [0], (path, s)          # a loop loses nothing unless the path does
            # a run lasts the duration at least, so it received rx_pps * duration at least
            least_received = s["rx_pps_runs"][0] * 0.3
            [redirected] = s["redirected_runs"]
            if path in dpp.KERNEL_PATHS:
                assert redirected is None
            else:                                        # the labelled program moved the packets
                assert redirected >= least_received > 0, (path, redirected, least_received)
    assert r["results"] == r["sizes"][0]["results"] and r["frame_bytes"] == 66     # the older keys: the first size
    assert _gone(r["testbed"])


def test_paths_leave_the_node_as_built():
    with running_testbed("chain", "nat") as rec:
        info = rec["nodes"]["nf0"]
        ns, sides = info["ns"], info["wiring"]
        built = attach.xdp_attachments(ns)
        nat_ids = {built[s][0] for s in sides}
        assert len(nat_ids) == 1
        with dpp.NfPaths(rec) as paths:
            for path in ("xdp_forward", "nft_masquerade", "kernel_forward", "xdp_ids", "kernel_forward",
                         "nft_masquerade", "xdp_nat", "xdp_forward"):
                paths.use(path)
                now = attach.xdp_attachments(ns)
                masquerading = "nfxbench" in netns.run(["nft", "list", "tables"], ns=ns)
                assert masquerading == (path == "nft_masquerade"), path
                if path in dpp.KERNEL_PATHS:
                    assert sides[1] not in now and now[sides[0]][0] not in nat_ids      # the stub inside
                else:
                    assert now[sides[0]][0] == now[sides[1]][0]
                    assert (now[sides[0]][0] in nat_ids) == (path == "xdp_nat"), path
            paths.use("nft_masquerade")             # close() takes it away too
        after = attach.xdp_attachments(ns)
        assert {after[s][0] for s in sides} == nat_ids
        assert netns.run(["ip", "-4", "-o", "addr", "show", "dev", sides[0]], ns=ns).strip() == ""
        assert netns.run(["sysctl", "-n", "net.ipv4.ip_forward"], ns=ns).strip() == "0"
        assert "nfxbench" not in netns.run(["nft", "list", "tables"], ns=ns)
        assert not (registry.pin_root(rec.name) / dpp.IDS_PIN).exists()


FAIL_HALF_WAY = """
import json, sys
from nfx.bench import dataplane
seen = {}
def progress(msg):
    if msg.startswith("testbed "):
        seen["testbed"] = msg.split()[1].rstrip(":")
    if msg.endswith(": nft_masquerade"):
        raise RuntimeError("injected")
try:
    dataplane.run(flows=10, duration=0.2, reps=1, progress=progress)
except RuntimeError:
    print(json.dumps(seen))
    sys.exit(0)
sys.exit(1)
"""


def test_failure_half_way_removes_everything():
    r = subprocess.run([sys.executable, "-c", FAIL_HALF_WAY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json
    name = json.loads(r.stdout)["testbed"]
    assert name.startswith("bd") and _gone(name)
