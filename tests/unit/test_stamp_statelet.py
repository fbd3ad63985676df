"""The STAMP statelet (table 7, nfx_statelet.h) in Python, no kernel: parsed by parse_record and
the bulk parser, read by stamp_of, round-tripped through dicts, refused when malformed, and
skipped by both replays (records with and without it give the same tables and counts, but
for the statelet count)."""
import random

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.flows import make_key
from nfx.state import replay as R
from nfx.state import statelets as S
from nfx.state import stbatch as SB
from tests.unit.test_statelets_fast import COUNTED, rand_stream, same

KEY = bytes(make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp"))


def stamp(key: bytes = KEY, n: int = 5) -> S.Update:
    return S.Update(L.StTable.STAMP, L.StOp.SET, key, 1, (n,), 0)


def test_a_record_led_by_its_stamp_parses_and_says_its_stamp():
    s = S.encode(stamp())
    assert len(s) == 4 * S.WORD                      # header, 2 key words, the stamp
    rec = s + S.encode(S.Update(L.StTable.IDS_HOSTPORTS, L.StOp.DEL, bytes(8), 0, (), 0))
    ups = S.parse_record(rec)
    assert ups[0] == stamp() and S.stamp_of(ups) == S.stamp_of(rec) == (KEY, 5)
    assert S.stamp_of(ups[1:]) is None and S.stamp_of([]) is None
    assert S.from_dict(S.to_dict(ups[0])) == ups[0]
    d = S.to_dict(ups[0])
    assert (d["table"], d["fields"], d["key"]["sport"]) == ("stamp", {"value": 5}, 5000)
    b = SB.parse_records([rec, s])
    assert list(b.table) == [L.StTable.STAMP, L.StTable.IDS_HOSTPORTS, L.StTable.STAMP]


@pytest.mark.parametrize("bad", [
    S.HDR.pack(7, 1, 2, 1, 0) + bytes(24),          # nval does not match the mask
    S.HDR.pack(7, 1, 1, 1, 9) + bytes(24),          # an incarnation on a table that has none
    S.HDR.pack(7, 3, 1, 1, 0) + bytes(24),          # no such op
])
def test_a_malformed_stamp_is_refused_by_both_parsers(bad):
    with pytest.raises(BadInput):
        S.parse_record(bad)
    with pytest.raises(BadInput):
        SB.parse_records([bad])


@pytest.mark.parametrize("kind", ["nat", "ids"])
def test_replay_skips_stamps(kind):
    rng = random.Random(7)
    for _ in range(40):
        stream = rand_stream(rng, kind, rng.randrange(1, 60))
        led = [S.encode(stamp(n=i)) + r for i, r in enumerate(stream)]
        for apply in (R.apply, R.apply_slow):
            a, b = R.Tables(kind), R.Tables(kind)
            ra, rb = apply(a, stream), apply(b, led)
            assert same(a, b)
            assert {k: ra[k] for k in COUNTED if k != "statelets"} == {k: rb[k] for k in COUNTED if k != "statelets"}
            assert rb["statelets"] == ra["statelets"] + len(stream)
    assert S.STAMP.table not in S.SCHEMAS            # what replay walks names maps only
