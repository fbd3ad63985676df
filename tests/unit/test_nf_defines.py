"""The NF programs' build settings from `nfx testbed up` (nfx/testbed/builder.py): sizes that
are not a power of two, or out of range, are refused before anything is built."""
import pytest

from nfx.errors import BadInput
from nfx.testbed.builder import nf_defines


def test_defaults_and_sizes():
    assert nf_defines(None) == {}
    assert nf_defines(1024, 64) == {"NFX_STATELET_RING_PAGES": 256, "NFX_HOLD_SLOTS": 64}


@pytest.mark.parametrize("ring,slots", [(3, None), (1000, None), (None, 100), (None, 8), (None, 1 << 17)])
def test_bad_sizes_refused(ring, slots):
    with pytest.raises(BadInput):
        nf_defines(ring, slots)
