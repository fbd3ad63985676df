"""python -m tests.warm: compile into the image cache (nfx/loader/imagecache.py) the programs the
netns tests load first: a testbed's stub, switch and default NAT and IDS, and the traffic rigs'
generator and sinks of every size class. tests/conftest.py runs it on the otherwise idle CPU
while the unit and BPF tiers run, and kills it when the first netns test starts: on a machine
whose cache is empty those tests then load copies instead of compiling each program once in
the foreground. Anything it did not get to is compiled by the test that needs it, as without it."""
import os

from nfx.loader import compile as comp, imagecache
from nfx.nfs import nf_class
from nfx.testbed.builder import nf_defines
from nfx.traffic.gen import gen_defines
from nfx.traffic.sink import sink_defines, window_words
from tests.netns.tbutil import TESTBED_MAX_FLOWS
SIZE_CLASSES = [64 << i for i in range(9)]       # 64 .. 16384 flows


def images() -> list[tuple[str, dict | None]]:
    out = [("stub", None), ("switch", None)]
    out += [(kind, nf_class(kind).build_defines(TESTBED_MAX_FLOWS, nf_defines(None))) for kind in ("nat", "ids")]
    for n in SIZE_CLASSES:
        out += [("gen", gen_defines(n)), ("sink", sink_defines(n, window_words(n))),
                ("sink", sink_defines(n, window_words(n), echo=True))]
    return out


def main() -> None:
    for name, defines in images():
        key = comp.source_key(name, defines)[3]
        if key is None or (imagecache.CACHE_DIR / imagecache.entry_name(key)).exists():
            continue
        try:
            comp.compile_source(name, defines).cleanup()
        except Exception:
            pass                # the test that loads it compiles it and reports what is wrong


if __name__ == "__main__":
    os.nice(19)
    main()
