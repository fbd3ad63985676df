"""Test tiers: unit (no root), bpf (BPF_PROG_TEST_RUN, root), netns (integration, root).
Root tiers skip with a reason when not root or when BCC is missing."""
import os

import pytest


def _bpf_ready() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) not importable"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers (run scripts/bootstrap.sh)"
    return None


def pytest_collection_modifyitems(config, items):
    why = _bpf_ready()
    for item in items:
        path = str(item.fspath)
        if "/tests/bpf/" in path or "/tests/netns/" in path:
            item.add_marker(pytest.mark.root)
            if "/tests/netns/" in path:
                item.add_marker(pytest.mark.netns)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session", autouse=True)
def _orphaned_test_testbeds():
    """A test process that died mid-build (a crash, a kill) could not tear down: clear what it left."""
    if os.geteuid() == 0:
        import re
        from nfx import registry
        from nfx.testbed import builder
        for name in registry.names():
            if re.fullmatch(r"t[0-9a-f]{6}", name) and registry.orphaned(name):
                builder.down(name)
    yield
