"""SHarP's HSL messages as nfx/frames.py builds and reads them, checked against scapy's decoding
(an independent parser) and nfx_hsl.h's layout: magic in network order, the rest host order."""
import struct

import pytest
from scapy.all import IP, UDP, Ether

from nfx import layout as L
from nfx.errors import BadInput
from nfx.frames import HSL_BODY_MAX, hsl_frame, parse_hsl

MAC = bytes.fromhex("02000000000a")


def test_frame_decodes_as_udp_broadcast_with_valid_checksums():
    body = b'{"flows": 3}'
    f = hsl_frame(L.HslKind.ACK, 0x01020304, 1, body, MAC)
    p = Ether(f)
    assert p.dst == "ff:ff:ff:ff:ff:ff" and p.src == "02:00:00:00:00:0a"
    assert p[IP].src == "0.0.0.0" and p[IP].dst == "255.255.255.255" and p[IP].tos == L.TOS_HSL
    assert p[UDP].sport == p[UDP].dport == L.HSL_PORT
    # scapy recomputes the checksums it is asked to drop: they must equal ours
    ip_ck, udp_ck = p[IP].chksum, p[UDP].chksum
    del p[IP].chksum, p[UDP].chksum
    again = Ether(bytes(p))
    assert (again[IP].chksum, again[UDP].chksum) == (ip_ck, udp_ck)
    pl = bytes(p[UDP].payload)
    assert pl[:4] == struct.pack("!I", L.HSL_MAGIC)
    assert struct.unpack("=IBBH", pl[4:12]) == (0x01020304, L.HslKind.ACK, 1, len(body))
    assert pl[12:] == body


@pytest.mark.parametrize("kind", list(L.HslKind))
def test_round_trip(kind):
    f = hsl_frame(kind, 77, 0, b"x" * 100, MAC, dst_mac=b"\x02" * 6)
    assert f[:6] == b"\x02" * 6
    assert parse_hsl(f) == (kind, 77, 0, b"x" * 100)


def test_a_ring_copy_cut_short_keeps_what_it_holds():
    f = hsl_frame(L.HslKind.DONE, 5, 1, b"y" * HSL_BODY_MAX, MAC)
    assert len(f) == 1514
    assert parse_hsl(f[:1000]) == (L.HslKind.DONE, 5, 1, b"y" * (1000 - 54))


@pytest.mark.parametrize("mangle", ["tos", "magic", "proto", "ethertype", "short"])
def test_other_frames_are_not_hsl(mangle):
    f = bytearray(hsl_frame(L.HslKind.TEST, 9, 0, b"", MAC))
    if mangle == "tos":
        f[15] = 0
    elif mangle == "magic":
        f[42] ^= 1
    elif mangle == "proto":
        f[23] = 6
    elif mangle == "ethertype":
        f[12:14] = b"\x86\xdd"
    else:
        f = f[:50]
    assert parse_hsl(bytes(f)) is None


@pytest.mark.parametrize("args", [(0, 1, 0, b""), (9, 1, 0, b""), (1, -1, 0, b""), (1, 1 << 32, 0, b""),
                                  (1, 1, 256, b""), (1, 1, 0, b"z" * (HSL_BODY_MAX + 1))])
def test_bad_messages_rejected(args):
    with pytest.raises(BadInput):
        hsl_frame(*args, MAC)
