"""Where nfx finds its sources and keeps its runtime state."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BPF_DIR = REPO / "bpf"
BPF_INCLUDE = BPF_DIR / "include"
TOPOLOGY_DIR = REPO / "netns"
PIN_ROOT = Path("/sys/fs/bpf/nfx")
RUN_DIR = Path("/run/nfx")


def decision_log(testbed: str) -> Path:
    """Where `nfx orchestrate run` appends its decisions (JSON lines) for `nfx inspect`; removed
    with the testbed."""
    return RUN_DIR / f"orchestrate-{testbed}.jsonl"
