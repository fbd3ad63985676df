"""nfx/layout.py must match bpf/include/nfx.h as BCC parses it: every struct's size, and every
field's offset and size."""
import ctypes as ct

import pytest

from nfx import layout as L
from nfx.loader.compile import expand_includes


@pytest.fixture(scope="module")
def parsed():
    import bcc
    text = '#include "nfx_bpf.h"\n' + "".join(
        f"BPF_ARRAY(m_{name}, struct {name}, 1);\n" for name in L.MIRRORS)
    from nfx.paths import BPF_INCLUDE
    b = bcc.BPF(text=expand_includes(text).encode(), cflags=["-w", f"-I{BPF_INCLUDE}"])
    yield {name: b[f"m_{name}".encode()].Leaf for name in L.MIRRORS}
    b.cleanup()


@pytest.mark.parametrize("name", sorted(L.MIRRORS))
def test_mirror_matches_header(parsed, name):
    mine, theirs = L.MIRRORS[name], parsed[name]
    assert ct.sizeof(mine) == ct.sizeof(theirs), f"sizeof(struct {name})"
    their_fields = {f[0]: getattr(theirs, f[0]) for f in theirs._fields_}
    for fname, offset, size in L.describe(mine):
        assert fname in their_fields, f"{name}.{fname} not in the header"
        assert (offset, size) == (their_fields[fname].offset, their_fields[fname].size), f"{name}.{fname}"
    assert set(their_fields) <= {f for f, _, _ in L.describe(mine)} | {"__pad"}, f"{name}: header has more fields"
