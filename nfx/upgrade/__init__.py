"""Hot upgrade: replace a running NF instance's XDP program, keep all of its state, lose no packet.

Two modes, chosen by `conversion`:

* **Shared** (no conversion: a rebuild of the same NF, or a modified .bpf.c whose tables keep
  their layouts). The new program is compiled with NFX_PIN_DIR naming a staging directory that
  holds a second pin of every map pinned for the instance, so each NFX_TABLE opens the very map
  object the running program uses (verified by map id; declared key/value size, type and size
  must equal the kernel's, because BCC silently accepts a pinned map of another layout). Maps
  that are not NFX_TABLEs (the `nfx_tx` devmap, ringbufs, per-CPU scratch) are new objects: the
  devmap is refilled with the old devmap's slots, checked against nfx_port_cfg. Then the program
  is attached over the old one on every interface that runs it (the kernel swaps an XDP program
  atomically per interface) and `prog` and the fresh maps are re-pinned.

* **Converted** (`conversion` maps a table name to a function turning old raw values into new
  raw values). Changed tables are left out of the staging directory, so BCC creates them fresh
  with the new layout; every other table is shared as above. Pass 1 copies and converts every
  entry while the old program runs, a catch-up pass copies what changed during pass 1, then the
  swap; pass 2 (twice: at once, and again after an RCU grace period, when no old-program
  invocation can still be running) applies what the old program changed since the last copy.
  Pass 2 runs inside the kernel, in a generated XDP program driven by BPF_PROG_TEST_RUN, so its
  updates interleave with the new program's as the new program's own updates do: counters get
  the old program's increments added atomically (nothing the new program counted meanwhile is
  overwritten), `maxes` keep the larger value, `ors` are ORed, other fields take the old
  program's value unless the new program changed them since the swap. Finally the converted
  tables' pins are replaced (rename in bpffs, atomic) so the pin dir describes the new program.

Before the swap both programs are parked on a spare veth pair, so the kernel's XDP dispatcher
holds both and each interface's swap is a pointer exchange (tens of us) instead of one RCU grace
period (10-40 ms) between the first side and the second.

Nothing changes if anything fails before the swap (the staging pins are removed, the new
program and its fresh maps die with their last fd). If attaching to the n-th interface fails,
the interfaces already swapped are put back to the old program; so are all of them if pass 2
fails. Guarantees and limits: `GUARANTEES` below."""
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BpfError, NfxError
from ..loader import attach
from ..loader.swap import rcu_sync
from .. import registry
from .convert import CONVERSIONS, Conversion, by_field, conversions, implied_defines, parse_defines
from .swap import Upgrade, locked

__all__ = ["CONVERSIONS", "GUARANTEES", "Conversion", "by_field", "parse_defines", "upgrade"]

GUARANTEES = """\
Shared layout (no conversion): every packet is processed exactly once, by the old or by the new
program, against the same state objects; no table is copied, so no update can be lost. Both
programs are parked in the kernel's XDP dispatcher beforehand, so each interface's swap is a
pointer exchange; the two sides are swapped back to back, measured 50-200 us apart (upper bound),
and in that moment one side runs the old code and the other the new one, on the same state. (An
XDP attach or repeated XDP test run elsewhere on the machine at the same moment holds the
dispatcher's mutex and can stretch that to ~10 ms.)
Converted layout: every entry the old program holds at the swap is in the new table after
pass 2, converted; every counter increment the old program made is in the new table, added to
what the new program counted meanwhile (atomic adds in the kernel, exact per flow). `maxes` keep
the larger value, `ors` are ORed, other fields keep the new program's value if it changed them
after the swap, else take the old program's. Not guaranteed: (1) a key the old program creates
after the last pre-swap copy (the copy-to-pass-2 window: a few ms, growing with table size) and
that the new program also sees before pass 2 carries it: the new program makes its own entry,
pass 2 keeps it and reports the key under `conflicts` (for the NAT: that connection gets a
second public port; the first port and its return entry stay taken until the datapath
reclaims the port). (2) Until pass 2 the new
program does not see keys created in that window; until the re-pin, right after pass 2, the
converted tables' pins still name the old maps. (3) While the two sides are swapped (see above)
one side works on the old tables and the other on the new ones: a reply that needs an entry the
other side created in that moment is dropped. (4) Old-program runs still in flight on
another CPU at the swap are folded in by the second pass 2, after an RCU grace period.
Always: maps that are not NFX_TABLEs (the devmap, ringbufs, per-CPU scratch) are new objects (the
devmap is refilled before the swap; readers of a ring must reopen its pin; `nfx nf upgrade`
restarts the instance's agent afterwards so it opens the new objects); programs run by test-run from an
old fd are not upgraded; only hash/array tables convert, keys keep their layout, and a table
keeps its max_entries unless it is converted."""


def upgrade(testbed: str, instance: str, source: str | Path | None = None, defines: dict | None = None,
            conversion=None, progress: Callable[[str], None] | None = None,
            hook: Callable[[str], None] | None = None) -> dict:
    """Replace the XDP program of `instance` in `testbed` while it runs; returns a report.
    source: a .bpf.c file (default: bpf/<kind>.bpf.c); defines: -D flags on top of the
    instance's current build (None as a value removes one); conversion: {table: function or
    Conversion} or the name of a built-in one (CONVERSIONS), whose defines apply first.
    hook(stage) is called at 'verified', 'pass1', 'before_swap', 'swapped', 'pass2', 'done' (tests).
    The instance's agent still holds the replaced objects (report["repinned"]): restarting it
    is the caller's (nfx nf upgrade does it)."""
    say = progress or (lambda msg: None)
    hook = hook or (lambda stage: None)
    defines = implied_defines(conversion, defines)
    convs = conversions(conversion)
    t_all = time.perf_counter()
    up = Upgrade(registry.load(testbed), instance, source, defines, convs, say, hook)
    with locked(up.pin_dir, instance):
        try:
            up.inspect_old()
            up.stage()
            up.build()
            up.verify()
            hook("verified")
            up.refill_devmaps()
            up.prewarm()
            if convs:
                up.pass1()
                hook("pass1")
            say(f"swapping {', '.join(up.ifaces)}: program {up.old_id} -> {up.new_id}")
            up.do_swap()
        except BaseException:
            up.close()
            raise
        try:
            hook("swapped")
            if convs:
                up.pass2("2")                       # at once: shortest window for new keys
                up.report["timing"]["rcu_ms"] = round(rcu_sync() * 1e3, 2)
                up.pass2("2-after-rcu")             # what old-program runs still in flight wrote
                hook("pass2")
        except BaseException as e:
            stuck = up.rollback(list(reversed(up.ifaces)))
            ran = (time.perf_counter() - up.swapped_at) * 1e3
            up.close()
            if stuck:
                raise BpfError(f"pass 2 failed ({e}) and rolling back failed on {', '.join(stuck)}") from e
            raise NfxError(f"pass 2 failed after the swap ({e}); rolled back to program {up.old_id}. "
                           f"What the new program wrote to the converted tables in the {ran:.1f} ms it ran is "
                           f"lost; shared tables keep it.") from e
        try:
            up.repin()
            up.record()
        except BaseException as e:
            raise NfxError(f"program {up.new_id} runs on {', '.join(up.ifaces)} with all state, but recording "
                           f"the upgrade failed: {e}; the pins under {up.pin_dir} may still name old objects") from e
        finally:
            up.close()
    att = attach.xdp_attachments(up.ns)
    up.report["attached"] = {i: att.get(i, (None,))[0] for i in up.ifaces}
    up.report["timing"]["total_s"] = round(time.perf_counter() - t_all, 3)
    hook("done")
    return up.report
