"""One hot upgrade of an NF instance, step by step (nfx.upgrade.upgrade runs them in order):
inspect what runs, stage the pins the new program shares, build and verify it against the
running state, refill its devmaps, park both programs, copy converted tables (pass 1), swap
every interface, merge what the old program changed since (pass 2), re-pin, record in the
registry. Kernel calls go through nfx.loader."""
import contextlib
import ctypes as ct
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import BadInput, BpfError, NfxError, NotFound
from ..loader import attach, bpfsys, netns, pin
from ..loader import swap as live
from ..loader.compile import compile_source, expand_includes, load
from ..loader.pin import map_names
from ..paths import BPF_DIR
from .. import registry
from .delta import Table, raw_t
from .merge import CONVERTIBLE, Merger

log = logging.getLogger("nfx.upgrade")

_DEFINE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def locked(pin_dir: Path, instance: str):
    return pin.locked(pin_dir, NfxError(f"another upgrade of {instance} is running"))


def _source_hash(text: str, defines: dict) -> str:
    h = hashlib.sha256(text.encode())
    h.update(json.dumps(sorted((k, str(v)) for k, v in defines.items())).encode())
    return h.hexdigest()


def _read_raw(fd: int, info, key: int):
    k = ct.c_uint32(key)
    v = raw_t(info.value_size)()
    r = bpfsys.map_elem(bpfsys.MAP_LOOKUP_ELEM, fd, k, v)
    return None if r else bytes(v)


class Upgrade:
    """One upgrade's steps and what each learns (in the report). close() drops what only the
    upgrade needed: the staging pins, the parked veth pair, its fds and BCC objects (a program
    still attached somewhere stays: the kernel holds it)."""

    def __init__(self, rec, instance, source, defines, convs, say, hook):
        info = rec.get("nodes", {}).get(instance)
        if not info or info.get("role") != "nf" or "pin" not in info:
            nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
            raise NotFound(f"no NF instance {instance!r} in testbed {rec['name']}", hint=f"instances: {', '.join(nfs) or 'none'}")
        self.rec, self.instance, self.info = rec, instance, info
        self.kind, self.ns, self.pin_dir = info["kind"], info["ns"], Path(info["pin"])
        self.sides = list(info.get("wiring") or [])
        self.say, self.hook, self.convs = say, hook, convs
        self.src = Path(source) if source else BPF_DIR / f"{self.kind}.bpf.c"
        if not self.src.is_file():
            raise NotFound(f"no BPF source {self.src}")
        base = {"NFX_MAX_FLOWS": rec.get("max_flows", 262144), **info.get("build", {}).get("defines", {})}
        for k, v in (defines or {}).items():
            if not _DEFINE_RE.match(str(k)) or k == "NFX_PIN_DIR":
                raise BadInput(f"bad define {k!r}" + (": upgrade sets NFX_PIN_DIR itself" if k == "NFX_PIN_DIR" else ""))
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
        self.defines = base
        self.staging = self.pin_dir.parent / f"upgrade-{instance}"     # bpffs names cannot hold a dot
        self.fds: list[int] = []
        self.b = self.fn = self.merger = None
        self.report = {"testbed": rec["name"], "instance": instance, "kind": self.kind,
                       "mode": "converted" if convs else "shared", "source": str(self.src),
                       "defines": dict(self.defines), "passes": [], "timing": {}}

    def _fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    # -- what runs now
    def inspect_old(self):
        if not (self.pin_dir / "prog").exists():
            raise NotFound(f"instance {self.instance} has no pinned program at {self.pin_dir}/prog")
        self.old_prog = self._fd(bpfsys.obj_get(str(self.pin_dir / "prog")))
        pi, used = bpfsys.prog_info(self.old_prog)
        self.old_id, self.old_used = pi.id, set(used)
        self.old_maps = {}                                   # name -> (fd, MapInfo)
        for p in sorted(self.pin_dir.iterdir()):
            if p.name == "prog" or p.is_dir():
                continue
            fd = bpfsys.obj_get(str(p))
            if bpfsys.fd_kind(fd) != "map":
                os.close(fd)                                 # someone else's pinned program: left alone
                continue
            self._fd(fd)
            self.old_maps[p.name] = (fd, bpfsys.map_info(fd))
        att = attach.xdp_attachments(self.ns)
        self.ifaces = [i for i in att if att[i][0] == self.old_id]
        missing = [s for s in self.sides if s not in self.ifaces]
        if missing:
            raise NfxError(f"{self.instance}: {', '.join(missing)} does not run the pinned program {self.old_id} "
                           f"({', '.join(f'{i}: {att.get(i, (None,))[0]}' for i in missing)}): refusing to upgrade")
        if not self.ifaces:
            raise NfxError(f"{self.instance}: the pinned program {self.old_id} is attached nowhere")
        self.ifaces = self.sides + sorted(i for i in self.ifaces if i not in self.sides)
        self.modes = {i: att[i][1] for i in self.ifaces}
        for name, c in self.convs.items():
            if name not in self.old_maps:
                raise BadInput(f"conversion for {name!r}: {self.instance} has no table {name}",
                               hint=f"tables: {', '.join(sorted(self.old_maps))}")
            ty = self.old_maps[name][1].type
            if ty not in CONVERTIBLE:
                raise BadInput(f"table {name} is a {live.MAP_TYPE_NAMES.get(ty, ty)} map: hot upgrade converts "
                               f"only {', '.join(CONVERTIBLE.values())} tables")
        self.report.update(old_prog_id=self.old_id, interfaces=list(self.ifaces))

    # -- build
    def stage(self):
        if self.staging.exists():
            shutil.rmtree(self.staging)                      # a crashed upgrade's leftovers (we hold the lock)
        self.staging.mkdir(parents=True)
        self.staged = set()
        for name, (fd, _) in self.old_maps.items():
            if name not in self.convs:
                bpfsys.obj_pin(fd, str(self.staging / name))
                self.staged.add(name)

    def build(self):
        text = expand_includes(self.src.read_text())
        self.report["source_sha256"] = _source_hash(text, self.defines)
        t = time.perf_counter()
        self.say(f"compiling {self.src.name} ({', '.join(f'{k}={v}' for k, v in self.defines.items())})")
        self.b = compile_source(self.kind, {**self.defines, "NFX_PIN_DIR": f'"{self.staging}"'}, path=self.src)
        self.report["timing"]["compile_s"] = round(time.perf_counter() - t, 3)

    def verify(self):
        """The maps first (BCC created or opened them when it compiled), then the program: the
        verifier checks accesses against the maps it is given, so a layout mismatch is caught
        here with a clear message before it can become a verifier log."""
        created = {p.name for p in self.staging.iterdir()} - self.staged     # pinned there by BCC
        self.new_maps, how = {}, {}
        problems, warnings = [], []
        for name in map_names(self.b):
            t = self.b[name.encode()]
            fd = t.map_fd
            ki = bpfsys.map_info(fd)
            self.new_maps[name] = (fd, ki)
            old = self.old_maps.get(name)
            if name in self.convs:
                if name not in created or (old and ki.id == old[1].id):
                    problems.append(f"{name}: the new program did not create a fresh table to convert into")
                elif ki.key_size != old[1].key_size or ki.type != old[1].type:
                    problems.append(f"{name}: a conversion changes values only; key {old[1].key_size}->{ki.key_size} B, "
                                    f"type {live.MAP_TYPE_NAMES.get(old[1].type)}->{live.MAP_TYPE_NAMES.get(ki.type)}")
                how[name] = "converted"
            elif name in created:
                how[name] = "added"                          # an NFX_TABLE the old program did not have
            elif name in self.staged and ki.id == old[1].id:
                # BCC opened the pinned map whatever the declaration says: compare the two
                leaf = getattr(t, "sLeaf", t.Leaf)           # BCC's per-CPU Leaf is an array of CPUs
                decl = (ct.sizeof(t.Key), ct.sizeof(leaf), int(t.ttype), int(t.max_entries))
                have = (ki.key_size, ki.value_size, ki.type, ki.max_entries)
                if ki.type == bpfsys.MAP_RINGBUF:            # a ringbuf has no key or value
                    decl = (0, 0) + decl[2:]
                if decl != have:
                    problems.append(
                        f"{name}: the new program declares key {decl[0]} B, value {decl[1]} B, "
                        f"{live.MAP_TYPE_NAMES.get(decl[2], decl[2])}[{decl[3]}]; the running table is key {have[0]} B, "
                        f"value {have[1]} B, {live.MAP_TYPE_NAMES.get(have[2], have[2])}[{have[3]}]" +
                        ("" if decl[:3] == have[:3] else f": its layout changes, give a conversion for {name}"))
                how[name] = "shared"
            else:
                how[name] = "fresh"                          # not an NFX_TABLE: a new object (devmap, ring, scratch)
                if old and old[1].type not in live.DEVMAP_TYPES | {bpfsys.MAP_ARRAY, bpfsys.MAP_PERCPU_ARRAY,
                                                                  bpfsys.MAP_RINGBUF}:   # arrays outside NFX_TABLE: scratch
                    warnings.append(f"{name}: a new, empty {live.MAP_TYPE_NAMES.get(ki.type, ki.type)} replaces the "
                                    f"pinned one (not declared with NFX_TABLE in the new program)")
        for name in self.convs:
            if name not in self.new_maps:
                problems.append(f"{name}: the new program has no table {name} to convert into")
        if problems:
            raise BpfError(f"the new {self.kind} program does not fit {self.instance}'s state:\n  " + "\n  ".join(problems))
        t = time.perf_counter()
        self.fn = load(self.b, f"nfx_{self.kind}", "xdp")
        self.report["timing"]["load_s"] = round(time.perf_counter() - t, 3)
        pi, used = bpfsys.prog_info(self.fn.fd)
        self.new_id = pi.id
        ids = {fd_ki[1].id for fd_ki in self.new_maps.values()}
        foreign = set(used) - ids
        if foreign:
            problems.append(f"the new program uses map ids {sorted(foreign)} that are none of its tables")
        if problems:
            raise BpfError(f"the new {self.kind} program does not fit {self.instance}'s state:\n  " + "\n  ".join(problems))
        self.how = how
        self.removed = sorted(n for n in self.old_maps if n not in self.new_maps)
        self.report["new_prog_id"] = self.new_id
        self.report["maps"] = {n: {"how": how[n], "id": self.new_maps[n][1].id,
                                   **({"old_id": self.old_maps[n][1].id} if n in self.old_maps else {})}
                               for n in sorted(self.new_maps)}
        self.report["removed_tables"] = self.removed
        unpinned = self.old_used - {i.id for _, i in self.old_maps.values()}
        if unpinned:
            warnings.append(f"the running program uses {len(unpinned)} map(s) with no pin under {self.pin_dir} "
                            f"(ids {sorted(unpinned)}): their contents are not carried over")
        self.report["warnings"] = warnings
        if self.convs:
            self.tables = [Table(n, c, self.old_maps[n][0], self.old_maps[n][1], self.new_maps[n][0],
                                  self.new_maps[n][1], self.staging / n) for n, c in self.convs.items()]
            self.say("building the pass-2 merge program")
            t = time.perf_counter()
            self.merger = Merger(self.tables)
            self.report["timing"]["merge_build_s"] = round(time.perf_counter() - t, 3)
            for t_ in self.tables:      # the conversion must accept a row before anything moves
                t_.convert(np.zeros((1, t_.osz), np.uint8))

    def refill_devmaps(self):
        """New devmaps get the old devmap's slots; the sides must agree with nfx_port_cfg."""
        port = self.old_maps.get("nfx_port_cfg")
        sides = None
        if port:
            cfg = _read_raw(port[0], port[1], 0)
            if cfg and len(cfg) >= 8:
                sides = list(np.frombuffer(cfg[:8], "<u4"))
        filled = {}
        with netns.enter(self.ns):
            for name, (fd, ki) in self.new_maps.items():
                if ki.type not in live.DEVMAP_TYPES or self.how.get(name) != "fresh":
                    continue
                if ki.value_size != 4:
                    raise BpfError(f"devmap {name} has {ki.value_size}-byte values: only ifindex slots are refilled")
                old = self.old_maps.get(name)
                slots = {}
                for s in range(ki.max_entries):
                    v = _read_raw(old[0], old[1], s) if old else None
                    if v is not None:
                        slots[s] = int.from_bytes(v, "little")
                if sides and name == "nfx_tx":
                    for s, idx in enumerate(sides):
                        if idx and slots.get(s, idx) != idx:
                            raise BpfError(f"{name} slot {s} holds ifindex {slots[s]}, nfx_port_cfg says {idx}")
                        if idx:
                            slots[s] = int(idx)
                for s, idx in slots.items():
                    r = bpfsys.map_elem(bpfsys.MAP_UPDATE_ELEM, fd, ct.c_uint32(s), ct.c_uint32(idx))
                    if r:
                        raise BpfError(f"refilling {name} slot {s} (ifindex {idx}): {os.strerror(r)}")
                filled[name] = slots
        self.report["devmaps"] = filled

    def prewarm(self) -> None:
        """Put the new program into the kernel's XDP dispatcher, and keep the old one in it, before
        the swap: attaching a program the dispatcher does not hold yet (or detaching the last
        user of one) waits for an RCU grace period (10-40 ms) inside the attach call. On the
        first side that would keep the two sides on different programs for that long; with
        both programs parked on a spare veth pair, each side's swap is a pointer exchange."""
        self.parked = True              # from here the pair may exist: close() removes it
        ok, ms, why = live.park(self.ns, self.fn.fd, self.old_prog, self.modes[self.ifaces[0]])
        self.report["prewarm"] = {"ok": ok, "ms": round(ms, 2)}
        if not ok:
            log.warning("parking the programs on %s/%s failed (%s): the swap will wait for the dispatcher",
                        *live.PARK, why)

    # -- state
    def pass1(self):
        for t in self.tables:
            self.say(f"pass 1: {t.name}")
            self.report["passes"].append({"pass": "1", "table": t.name, **t.pass1()})
        for t in self.tables:
            self.report["passes"].append({"pass": "catch-up", "table": t.name, **t.catchup()})

    def pass2(self, which: str) -> None:
        conflicts = self.report.setdefault("conflicts", [])
        for i, t in enumerate(self.tables):
            t0 = time.perf_counter()
            snap = t.snapshot()
            t1 = time.perf_counter()
            d = t.delta(*snap)
            rec = t.records(d)
            t2 = time.perf_counter()
            res, clash = self.merger.apply(i, rec) if len(rec) else ({}, [])
            conflicts += [{"table": t.name, "key": bytes(k).hex()} for k in clash]
            if res.get("insert_failed"):
                self.report["warnings"].append(f"{t.name}: {res['insert_failed']} entries the old program created "
                                               f"could not be inserted into the new table (full)")
            t.adopt(d)
            self.report["passes"].append({"pass": which, "table": t.name, "new": len(d["new"]),
                                          "changed": len(d["chg_now"]), "deleted": len(d["del"]), **res,
                                          "read_ms": round((t1 - t0) * 1e3, 3), "delta_ms": round((t2 - t1) * 1e3, 3),
                                          "ms": round((time.perf_counter() - t0) * 1e3, 3)})

    # -- the swap
    def swap(self, fd: int, order: list[str]) -> tuple[int, list[int]]:
        """Attach fd on each interface in order; returns (how many succeeded, ns timestamps)."""
        done, stamps, self.swap_log = live.replace_all(self.ns, order, fd, self.modes)
        return done, stamps

    def rollback(self, ifaces: list[str]) -> list[str]:
        back, stamps = self.swap(self.old_prog, ifaces)
        return ifaces[back:]

    def do_swap(self):
        self.hook("before_swap")
        done, st = self.swap(self.fn.fd, self.ifaces)
        if done < len(self.ifaces):
            failed, why = self.ifaces[done], self.swap_log
            stuck = self.rollback(self.ifaces[:done])
            msg = f"attaching the new program to {failed} failed ({why or 'see above'})"
            if stuck:
                raise BpfError(msg + f"; rolling back failed on {', '.join(stuck)}: they run program {self.new_id}")
            raise BpfError(msg + (f"; {', '.join(self.ifaces[:done])} put back to program {self.old_id}" if done else
                                  "; nothing was swapped"))
        self.swapped_at = time.perf_counter()
        us = [(b - a) / 1e3 for a, b in zip(st, st[1:])]
        self.report["swap"] = {"per_interface_us": dict(zip(self.ifaces, [round(u, 1) for u in us])),
                               # the first side's new program runs from inside its attach call, the
                               # second's by the end of its call: an upper bound on the mixed window
                               "sides_apart_max_us": round((st[2] - st[0]) / 1e3, 1) if len(st) > 2 else 0.0,
                               "total_us": round((st[-1] - st[0]) / 1e3, 1)}

    # -- after
    def repin(self):
        moved = []
        for name, (fd, ki) in self.new_maps.items():
            h = self.how[name]
            if h == "shared":
                continue
            tmp = self.staging / name
            if h == "fresh":
                tmp.unlink(missing_ok=True)
                bpfsys.obj_pin(fd, str(tmp))
            os.replace(tmp, self.pin_dir / name)
            moved.append(name)
        tmp = self.staging / "prog"
        tmp.unlink(missing_ok=True)
        bpfsys.obj_pin(self.fn.fd, str(tmp))
        os.replace(tmp, self.pin_dir / "prog")
        for name in self.removed:
            (self.pin_dir / name).unlink(missing_ok=True)
        self.report["repinned"] = moved

    def record(self):
        rec = registry.load(self.rec["name"])
        node = rec["nodes"][self.instance]
        entry = {"time": time.time(), "old_prog_id": self.old_id, "prog_id": self.new_id,
                 "source": str(self.src), "source_sha256": self.report["source_sha256"],
                 "defines": {k: v for k, v in self.defines.items()}, "mode": self.report["mode"],
                 "converted": sorted(self.convs), "swap_us": self.report["swap"]["total_us"]}
        node["prog_id"] = self.new_id
        node["build"] = {"source": str(self.src), "source_sha256": entry["source_sha256"], "defines": entry["defines"]}
        node.setdefault("upgrades", []).append(entry)
        rec.save()

    def close(self):
        if getattr(self, "parked", False):
            live.unpark(self.ns)
            self.parked = False
        if self.merger:
            self.merger.close()
        if self.b is not None:
            self.b.cleanup()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
