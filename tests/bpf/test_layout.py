"""nfx/layout/ must match bpf/include/ as BCC parses it: every struct's size, and every field's
offset and size, each struct compiled from the one header its mirror module mirrors (so a header
also compiles on its own, with only what it includes)."""
import ctypes as ct

import pytest

from nfx import layout as L
from nfx.loader.compile import expand_includes
from nfx.paths import BPF_INCLUDE


@pytest.fixture(scope="module")
def parsed():
    import bcc
    out = {}
    for header, mod in L.MODULES.items():
        text = f'#include "{header}"\n' + "".join(
            f"BPF_ARRAY(m_{name}, struct {name}, 1);\n" for name in mod.MIRRORS)
        b = bcc.BPF(text=expand_includes(text).encode(), cflags=["-w", f"-I{BPF_INCLUDE}"])
        out.update({name: b[f"m_{name}".encode()].Leaf for name in mod.MIRRORS})
        b.cleanup()
    return out


def test_every_header_has_structs_mirrored():
    assert all(mod.MIRRORS for mod in L.MODULES.values())
    assert sum(len(mod.MIRRORS) for mod in L.MODULES.values()) == len(L.MIRRORS)


@pytest.mark.parametrize("name", sorted(L.MIRRORS))
def test_mirror_matches_header(parsed, name):
    mine, theirs = L.MIRRORS[name], parsed[name]
    assert ct.sizeof(mine) == ct.sizeof(theirs), f"sizeof(struct {name})"
    their_fields = {f[0]: getattr(theirs, f[0]) for f in theirs._fields_}
    for fname, offset, size in L.describe(mine):
        assert fname in their_fields, f"{name}.{fname} not in the header"
        assert (offset, size) == (their_fields[fname].offset, their_fields[fname].size), f"{name}.{fname}"
    assert set(their_fields) <= {f for f, _, _ in L.describe(mine)} | {"__pad"}, f"{name}: header has more fields"
