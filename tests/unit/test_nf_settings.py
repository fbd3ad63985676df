"""NF config from the command line (`nfx testbed up --nf-set name=value`): typed by the field,
bad names and values refused with a clear error before anything is built."""
import os

import pytest

from nfx.errors import BadInput
from nfx.nfs.base import apply_settings
from nfx.nfs.ids import IdsConfig
from nfx.nfs.nat import NatConfig
from nfx import registry
from nfx.testbed import builder, topology
from tests.netns.tbutil import nfx


def test_settings_typed_by_field():
    c = apply_settings(IdsConfig(), ["drop_uninspected=true", "scan-threshold=7"])
    assert c.drop_uninspected is True and c.scan_threshold == 7
    assert apply_settings(IdsConfig(), ["drop_uninspected=0"]).drop_uninspected is False
    n = apply_settings(NatConfig(), ["host_quota=64", "port_lo=30000"])
    assert (n.host_quota, n.port_lo) == (64, 30000)
    assert n.to_struct().host_quota == 64


@pytest.mark.parametrize("pair", ["nope=1", "host_quota", "host_quota=many", "drop_uninspected=maybe"])
def test_bad_settings_refused(pair):
    with pytest.raises(BadInput):
        apply_settings(NatConfig() if "quota" in pair else IdsConfig(), [pair])


def test_builder_config_for_each_kind():
    topo = topology.load("chain")
    assert builder.nf_config("nat", topo, ["host_quota=3"]).host_quota == 3
    assert builder.nf_config("ids", topo, ["drop_uninspected=yes"]).drop_uninspected is True
    assert builder.nf_config("ids", topo).drop_uninspected is False


def test_quota_out_of_range_refused():
    with pytest.raises(BadInput):
        NatConfig(host_quota=-1).to_struct()


@pytest.mark.skipif(os.geteuid() != 0, reason="nfx testbed up checks for root first")
def test_cli_refuses_a_bad_setting_before_building():
    r = nfx("testbed", "up", "--name", "tnfset", "--topology", "chain", "--nf", "ids", "--nf-set", "bogus=1")
    assert r.returncode == 2 and "bad NF setting" in r.stderr, (r.returncode, r.stderr)
    assert not registry.path("tnfset").exists()
