"""What tests/warm.py builds ahead is what the netns tier's rigs and testbeds load: the sink and
generator of any flow count fall in one of its size classes, and the testbed NF builds are the
builder's own for tbutil's defaults."""
import pytest

from nfx.nfs import nf_class
from nfx.testbed.builder import nf_defines
from nfx.traffic.gen import gen_defines
from nfx.traffic.sink import sink_defines, window_words
from tests import warm
from tests.netns.tbutil import TESTBED_MAX_FLOWS


@pytest.mark.parametrize("flows", [1, 20, 64, 100, 1000, 1100, 2048, 10_000])
def test_every_rig_size_is_built_ahead(flows):
    built = warm.images()
    assert ("gen", gen_defines(flows)) in built
    assert ("sink", sink_defines(flows, window_words(flows))) in built
    assert ("sink", sink_defines(flows, window_words(flows), echo=True)) in built


def test_the_testbed_nfs_are_the_builders_builds():
    built = warm.images()
    for kind in ("nat", "ids"):
        assert (kind, nf_class(kind).build_defines(TESTBED_MAX_FLOWS, nf_defines(None, None))) in built
    assert ("sink", sink_defines(10, window_words(10), pass_gen=True)) not in built     # a test's own build
