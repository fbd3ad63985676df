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


UNIT, BPF, NETNS = range(3)
TIERS = ("/tests/unit/", "/tests/bpf/", "/tests/netns/")


def _tier(item) -> int:
    path = str(item.fspath)
    return next((i for i, t in enumerate(TIERS) if t in path), UNIT)


def pytest_collection_modifyitems(config, items):
    why = _bpf_ready()
    # tier by tier, cheapest first (collected by name, netns would come before unit); a
    # stable sort, so each tier keeps its own order
    items.sort(key=_tier)
    netns_items = 0
    for item in items:
        tier = _tier(item)
        if tier >= BPF:
            item.add_marker(pytest.mark.root)
            if tier == NETNS:
                item.add_marker(pytest.mark.netns)
                netns_items += 1
            if why:
                item.add_marker(pytest.mark.skip(reason=why))
    # the unit and BPF tiers leave a CPU idle: compile what the netns tier loads first (tests/warm.py)
    if netns_items and not why and netns_items < len(items) and not config.option.collectonly:
        _Warmer.start()


class _Warmer:
    proc = None

    @classmethod
    def start(cls):
        import subprocess
        import sys
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cls.proc = subprocess.Popen([sys.executable, "-m", "tests.warm"], cwd=root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @classmethod
    def stop(cls):
        """Killed, not asked: a compile in clang would finish first. A cache entry it was writing
        is a temporary file of its pid (imagecache.save), removed here."""
        if cls.proc is None:
            return
        import signal
        from nfx.loader import imagecache
        if cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGKILL)
        cls.proc.wait()
        for tmp in imagecache.CACHE_DIR.glob(f"*.{cls.proc.pid}.tmp"):
            tmp.unlink(missing_ok=True)
        cls.proc = None


def pytest_runtest_setup(item):
    if _tier(item) == NETNS:
        _Warmer.stop()


def pytest_sessionfinish(session, exitstatus):
    _Warmer.stop()


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
