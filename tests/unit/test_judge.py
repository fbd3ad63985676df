"""The move bench's verdict from the sink's counts: what each guarantee forbids."""
from nfx.bench.move import judge

CLEAN = {"lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0, "out_of_window": 0}


def test_clean_passes_every_guarantee():
    assert all(judge(g, CLEAN)[0] for g in ("ng", "lf", "op"))


def test_unexpected_fails_every_guarantee():
    r = dict(CLEAN, unexpected=1)
    for g in ("ng", "lf", "op"):
        ok, verdict = judge(g, r)
        assert ok is False and "unexpected 1" in verdict, g


def test_out_of_window_fails_lf_and_op_not_ng():
    r = dict(CLEAN, out_of_window=3)
    assert judge("ng", r)[0] is True
    assert judge("lf", r) == (False, "VIOLATION: out_of_window 3")
    assert judge("op", r) == (False, "VIOLATION: out_of_window 3")


def test_loss_dup_reorder_as_before():
    assert judge("ng", dict(CLEAN, lost=5)) == (True, "ng (lost 5)")
    assert judge("lf", dict(CLEAN, reordered=1))[0] is True
    assert judge("op", dict(CLEAN, reordered=1)) == (False, "VIOLATION: reordered 1")
    assert judge("lf", dict(CLEAN, lost=1, duplicated=2)) == (False, "VIOLATION: lost 1, duplicated 2")


def test_older_rows_without_the_new_keys():
    assert judge("op", {"lost": 0, "duplicated": 0, "reordered": 1})[0] is False
    assert judge("lf", {"lost": 0, "duplicated": 0, "reordered": 1})[0] is True
