"""A program compiled a second time in one process (same source, same defines) is loaded as a
copy of the first compile's instructions with fresh maps (nfx/loader/image.py): the kernel must
see the same program, each copy must keep its own state, and builds that take maps over from
pins must still compile."""
import os
import secrets
import shutil
from pathlib import Path

from scapy.all import IP, UDP, Ether, Raw, raw

from nfx.loader import bpfsys, netns
from nfx.loader.compile import compile_source, load
from nfx.loader.image import Copy
from nfx.loader.pin import map_names
from nfx.nfs.nat import NAT, NatConfig
from tests.scratch import scratch_nf

XDP_REDIRECT = 4


def _kind(fd: int) -> tuple:
    i = bpfsys.map_info(fd)
    return (i.type, i.key_size, i.value_size, i.max_entries, i.map_flags, i.name, i.btf_id,
            i.btf_key_type_id, i.btf_value_type_id)


def test_second_compile_is_a_copy_of_the_same_program():
    for name, defines, fn, kind in (("switch", None, "nfx_switch", "tc"),
                                    ("nat", {"NFX_MAX_FLOWS": 2048}, "nfx_nat", "xdp")):
        a = compile_source(name, defines)
        b = compile_source(name, defines)
        try:
            assert isinstance(b, Copy)
            fa, fb = load(a, fn, kind), load(b, fn, kind)
            (ia, ma), (ib, mb) = bpfsys.prog_info(fa.fd), bpfsys.prog_info(fb.fd)
            # the tag hashes the instructions with the map references left out
            assert bytes(ia.tag) == bytes(ib.tag) and ia.xlated_prog_len == ib.xlated_prog_len
            assert ia.type == ib.type and fa.name == fb.name
            assert len(ma) == len(mb) and not set(ma) & set(mb)       # as many maps, none shared
            assert map_names(a) == map_names(b)
            for m in map_names(a):
                assert _kind(a[m.encode()].map_fd) == _kind(b[m.encode()].map_fd), m
        finally:
            b.cleanup()
            a.cleanup()


def test_other_defines_compile_again(monkeypatch):
    # compiled here, not taken from an earlier process's on-disk image (loader/imagecache.py)
    monkeypatch.setenv("NFX_NO_IMAGE_CACHE", "1")
    a = compile_source("gen", {"NFX_GEN_FLOWS": 8})
    b = compile_source("gen", {"NFX_GEN_FLOWS": 40})     # defines no other test compiles
    try:
        assert not isinstance(b, Copy)
        assert bpfsys.map_info(a[b"gen_seq"].map_fd).max_entries == 8
        assert bpfsys.map_info(b[b"gen_seq"].map_fd).max_entries == 40
    finally:
        a.cleanup()
        b.cleanup()


def _udp_out(inst) -> int:
    frame = raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src="10.0.1.2", dst="10.0.2.2")
                / UDP(sport=5000, dport=53) / Raw(b"q" * 20))
    with netns.enter(inst.ns):
        v, _, _ = bpfsys.prog_test_run(inst.fn.fd, frame, ingress_ifindex=inst.idx["in"])
    return v


def test_copies_keep_their_own_state():
    """Two NAT instances of one process: the second is a copy (spin-lock maps, BTF and all),
    translates, and what it records stays out of the first."""
    cfg = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101")
    with scratch_nf(NAT, "tia", cfg, max_flows=1024) as a, scratch_nf(NAT, "tib", cfg, max_flows=1024) as b:
        assert isinstance(b.bpf, Copy)
        assert _udp_out(b) == XDP_REDIRECT
        assert b.maps.nat_fwd.export()[0] == 1
        assert a.maps.nat_fwd.export()[0] == 0 and not any(a.stats().values())
        assert _udp_out(a) == XDP_REDIRECT
        assert a.maps.nat_fwd.export()[0] == 1 and b.maps.nat_fwd.export()[0] == 1
        assert a.stats() == b.stats()


def test_builds_from_pins_always_compile():
    """With NFX_PIN_DIR the compile opens the maps pinned there (a hot upgrade's takeover): a
    copy would make fresh ones instead, so such a build is never copied."""
    d = Path(f"/sys/fs/bpf/nfx-img-{os.getpid()}-{secrets.token_hex(2)}")
    d.mkdir()
    a = b = None
    try:
        a = compile_source("stub", {"NFX_PIN_DIR": f'"{d}"'})
        b = compile_source("stub", {"NFX_PIN_DIR": f'"{d}"'})
        assert not isinstance(b, Copy)
        assert bpfsys.map_info(a[b"nfx_stats"].map_fd).id == bpfsys.map_info(b[b"nfx_stats"].map_fd).id
    finally:
        for x in (a, b):
            if x is not None:
                x.cleanup()
        shutil.rmtree(d, ignore_errors=True)


def test_copy_cleanup_closes_its_maps_and_programs():
    compile_source("gen", {"NFX_GEN_FLOWS": 4}).cleanup()
    c = compile_source("gen", {"NFX_GEN_FLOWS": 4})
    assert isinstance(c, Copy)
    fds = [c[m.encode()].map_fd for m in map_names(c)] + [load(c, "nfx_gen").fd]
    assert {bpfsys.fd_kind(fd) for fd in fds} == {"map", "prog"}
    c.cleanup()
    assert [bpfsys.fd_kind(fd) for fd in fds] == [""] * len(fds)
