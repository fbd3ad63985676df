"""Orchestration policies: defaults for what is omitted, and every refusal names its field."""
import pytest

from nfx.errors import BadInput, NotFound
from nfx.orchestrate import policy as P


def test_empty_file_is_all_defaults():
    p = P.parse("")
    assert p == P.Policy()
    assert p.instance.capacity_pps == 150_000
    assert (p.thresholds.overload, p.thresholds.underload, p.thresholds.imbalance) == (0.9, 0.3, 0.8)
    assert p.thresholds.imbalance_basis == "flows"
    assert (p.hysteresis.samples, p.hysteresis.clear) == (3, 0.05)
    assert (p.monitor.interval_ms, p.monitor.history) == (100, 600)
    assert p.interval_s == 0.1


def test_given_fields_override_and_the_rest_default(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[instance]\ncapacity_pps = 20000\n[thresholds]\nimbalance = 0.7\nimbalance_basis = \"pps\"\n"
                 "[monitor]\ninterval_ms = 250\n")
    p = P.load(f)
    assert p.instance.capacity_pps == 20000.0 and isinstance(p.instance.capacity_pps, float)
    assert p.thresholds.imbalance == 0.7 and p.thresholds.imbalance_basis == "pps"
    assert p.thresholds.overload == 0.9                       # omitted: default
    assert p.monitor.interval_ms == 250 and p.monitor.history == 600
    assert p.source == str(f)
    d = p.as_dict()
    assert d["instance"] == {"capacity_pps": 20000.0} and "source" not in d


REFUSED = [
    ("[bogus]\nx = 1", "unknown section [bogus]"),
    ("capacity_pps = 1", "unknown field 'capacity_pps' outside any section"),
    ("instance = 3", "[instance] must be a table"),
    ("[instance]\ncapacity = 1", "unknown field 'capacity' in [instance]"),
    ("[thresholds]\noverlaod = 0.9", "unknown field 'overlaod' in [thresholds]"),
    ("[instance]\ncapacity_pps = \"lots\"", "[instance] capacity_pps: a number"),
    ("[instance]\ncapacity_pps = true", "[instance] capacity_pps: a number"),
    ("[instance]\ncapacity_pps = 0", "[instance] capacity_pps = 0 is out of range"),
    ("[instance]\ncapacity_pps = -5", "[instance] capacity_pps = -5 is out of range"),
    ("[thresholds]\noverload = 1.5", "[thresholds] overload = 1.5 is out of range"),
    ("[thresholds]\noverload = 0", "[thresholds] overload = 0 is out of range"),
    ("[thresholds]\nunderload = -0.1", "[thresholds] underload = -0.1 is out of range"),
    ("[thresholds]\nimbalance = 0.5", "[thresholds] imbalance = 0.5 is out of range (0.5, 1]"),
    ("[thresholds]\nimbalance = 1.01", "[thresholds] imbalance = 1.01 is out of range"),
    ("[thresholds]\nimbalance_basis = \"bytes\"", "imbalance_basis = 'bytes': one of flows, pps"),
    ("[thresholds]\nimbalance_basis = 3", "[thresholds] imbalance_basis: a string"),
    ("[thresholds]\nimbalance_min = -1", "[thresholds] imbalance_min = -1 is out of range"),
    ("[thresholds]\nunderload = 0.9\noverload = 0.9", "underload (0.9) must be below overload (0.9)"),
    ("[thresholds]\nunderload = 0.95", "underload (0.95) must be below overload (0.9)"),
    ("[thresholds]\nunderload = 0.5\noverload = 0.6\n[hysteresis]\nclear = 0.05", "clear points cross"),
    ("[thresholds]\nimbalance = 0.52\n[hysteresis]\nclear = 0.05", "an even split would not clear it"),
    ("[hysteresis]\nsamples = 0", "[hysteresis] samples = 0 is out of range"),
    ("[hysteresis]\nsamples = 2.5", "[hysteresis] samples: a whole number"),
    ("[hysteresis]\nclear = 0.5", "[hysteresis] clear = 0.5 is out of range"),
    ("[monitor]\ninterval_ms = 10", "[monitor] interval_ms = 10 is out of range [50, 60000]"),
    ("[monitor]\ninterval_ms = 100.0", "[monitor] interval_ms: a whole number"),
    ("[monitor]\nhistory = 0", "[monitor] history = 0 is out of range"),
    ("[instance\ncapacity_pps = 1", "not TOML"),
    ("[instance]\ncapacity_pps = 1\n[instance]\ncapacity_pps = 2", "not TOML"),
]


@pytest.mark.parametrize("text,message", REFUSED, ids=[m for _, m in REFUSED])
def test_refused_with_the_field_named(text, message):
    with pytest.raises(BadInput) as e:
        P.parse(text)
    assert message in str(e.value)


def test_unknown_fields_hint_at_the_known_ones():
    with pytest.raises(BadInput) as e:
        P.parse("[monitor]\nintervall = 1")
    assert "interval_ms" in e.value.hint and "history" in e.value.hint


def test_missing_file_binary_file_and_directory(tmp_path):
    with pytest.raises(NotFound):
        P.load(tmp_path / "none.toml")
    with pytest.raises(BadInput, match="directory"):
        P.load(tmp_path)
    b = tmp_path / "b.toml"
    b.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(BadInput, match="not TOML"):
        P.load(b)


def test_policy_is_frozen():
    p = P.parse("")
    with pytest.raises(Exception):
        p.instance.capacity_pps = 1
