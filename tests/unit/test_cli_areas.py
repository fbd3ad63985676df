"""`nfx AREA ...` imports only that area's module of nfx.cli (the benches and the testbed builder
are most of a command's start); a command line that names no area gets them all."""
import json
import subprocess
import sys

import pytest

PROBE = ("import json, sys; from nfx import cli; cli.register(sys.argv[1:]); "
         "print(json.dumps([sorted(m for m in sys.modules if m.startswith('nfx.cli.')), "
         "sorted(g.name or g.typer_instance.info.name for g in cli.app.registered_groups), "
         "sorted(c.name for c in cli.app.registered_commands)]))")


def probe(*argv):
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("argv,module,groups,commands", [
    (["state", "dump", "--name", "x"], "nfx.cli.state", ["state"], []),
    (["-v", "testbed", "status"], "nfx.cli.testbed", ["testbed"], []),
    (["inspect", "--name", "x"], "nfx.cli.inspect", [], ["inspect"]),
    (["controller", "status"], "nfx.cli.move", ["controller"], []),
])
def test_one_area_imports_one_module(argv, module, groups, commands):
    mods, got_groups, got_commands = probe(*argv)
    assert module in mods and "nfx.cli.bench" not in mods
    assert (got_groups, got_commands) == (groups, commands)


@pytest.mark.parametrize("argv", [[], ["--help"], ["bogus"]])
def test_no_area_named_registers_every_area(argv):
    mods, groups, commands = probe(*argv)
    assert "nfx.cli.bench" in mods and len(groups) == 8 and commands == ["handover", "inspect", "move"]
