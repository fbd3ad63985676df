"""layout_hash(kind) covers exactly the layout headers bpf/<kind>.bpf.c includes, so a state
file stays valid across edits to layouts its NF does not use; state written before the split
(one nfx.h, one hash) is accepted while the kind's headers are still those of the split."""
import ctypes as ct
import shutil
from types import SimpleNamespace

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.paths import BPF_DIR
from nfx.state import ops, wire

KINDS = ("nat", "ids", "switch", "gen", "sink", "stub")


@pytest.fixture
def bpf(tmp_path):
    """A copy of bpf/ to edit."""
    d = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, d)
    return d


def edit(bpf, header):
    p = bpf / "include" / header
    p.write_text(p.read_text() + "/* edited */\n")


def test_includes_follow_headers_transitively():
    assert set(L.hashing.includes("nat")) == {"nfx_nf.h", "nfx_bpf.h", "nfx_st_write.h", "nfx_dup.h", "nfx_hold.h", "nfx_release.h", "nfx_flow.h", "nfx_gate.h",
                                              "nfx_move.h", "nfx_hsl.h", "nfx_statelet.h", "nfx_nat.h", "nfx_stamp.h",
                                              "nfx_clock.h"}
    assert set(L.hashing.includes("sink")) == {"nfx_bpf.h", "nfx_flow.h", "nfx_bench.h"}
    assert set(L.hashing.includes("switch")) == {"nfx_bpf.h", "nfx_flow.h", "nfx_move.h", "nfx_switch.h",
                                                 "nfx_hsl.h", "nfx_sw_stamp.h"}


def test_kinds_hash_apart_unless_they_share_every_layout_and_an_unknown_kind_is_an_error():
    assert L.layout_hash("gen") == L.layout_hash("sink")      # both: nfx_flow.h, nfx_bench.h
    assert len({L.layout_hash(k) for k in KINDS if k != "gen"}) == len(KINDS) - 1
    with pytest.raises(Exception, match="no layout for NF kind 'nope'"):
        L.layout_hash("nope")


def test_editing_the_sinks_header_leaves_nat_state_valid(bpf):
    before = {k: L.layout_hash(k, bpf) for k in KINDS}
    assert before == {k: L.layout_hash(k) for k in KINDS}
    edit(bpf, "nfx_bench.h")
    after = {k: L.layout_hash(k, bpf) for k in KINDS}
    assert {k for k in KINDS if after[k] != before[k]} == {"gen", "sink"}


@pytest.mark.parametrize("header,changed", [
    ("nfx_nat.h", {"nat"}), ("nfx_ids.h", {"ids"}), ("nfx_gate.h", {"nat", "ids"}),
    ("nfx_move.h", {"nat", "ids", "switch"}), ("nfx_flow.h", set(KINDS)),
    ("nfx_switch.h", {"switch"}), ("nfx_hsl.h", {"nat", "ids", "switch"}),
    ("nfx_nf.h", set()), ("nfx_bpf.h", set()), ("nfx_st_write.h", set()),   # code, not layouts
    ("nfx_stamp.h", set()), ("nfx_sw_stamp.h", set()),
])
def test_an_edit_changes_the_hash_of_the_kinds_that_include_it(bpf, header, changed):
    before = {k: L.layout_hash(k, bpf) for k in KINDS}
    edit(bpf, header)
    assert {k for k in KINDS if L.layout_hash(k, bpf) != before[k]} == changed


def _chunk(layout, kind="nat"):
    e = ct.sizeof(L.FlowKey), ct.sizeof(L.NatEntry)
    return wire.Chunk("nat_fwd", "per-flow", kind, 0, e[0], e[1], 1, layout, b"", b"")


def test_import_checks_use_the_kinds_hash():
    """What the agent runs before applying a chunk (state.ops.check)."""
    nf = SimpleNamespace(kind="nat", instance="nf0", maps={"nat_fwd": SimpleNamespace(Key=L.FlowKey, Value=L.NatEntry)})
    ops.check(nf, _chunk(L.layout_hash("nat")))
    with pytest.raises(BadInput, match="layout feedfacefeedface.*refusing to import state of another layout"):
        ops.check(nf, _chunk("feedfacefeedface"))
    with pytest.raises(BadInput, match="refusing"):
        ops.check(nf, _chunk(L.layout_hash("ids")))
