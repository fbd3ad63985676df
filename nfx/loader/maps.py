"""Typed access to a BPF map by fd, with the layouts from nfx.layout. Bulk paths call the
kernel's batch commands straight into ctypes arrays (millions of entries/s); per-CPU maps
read as one value per possible CPU."""
import ctypes as ct
import errno
import logging
import os

from .. import layout as L
from ..errors import BpfError
from . import bpfsys as sys_

log = logging.getLogger("nfx.loader")


class Map:
    def __init__(self, fd: int, key_type, value_type, name: str = "", owns_fd: bool = False):
        self.fd = fd
        self.info = sys_.map_info(fd)
        self.name = name or self.info.name.decode()
        self.Key = key_type
        self.Value = value_type
        self.percpu = self.info.type in sys_.PERCPU_TYPES
        self.ncpu = sys_.possible_cpus() if self.percpu else 1
        self._owns = owns_fd
        self._reader = None         # a keyed reader (prepare_keyed_reads): None until asked, False if none
        if ct.sizeof(key_type) != self.info.key_size or ct.sizeof(value_type) != self.info.value_size:
            raise BpfError(f"map {self.name}: layout mismatch: kernel has key {self.info.key_size} B / "
                           f"value {self.info.value_size} B, nfx.layout has {ct.sizeof(key_type)} / "
                           f"{ct.sizeof(value_type)}: rebuild or restart the instance")
        # one slot as the kernel hands it over: per-CPU values come as ncpu copies, 8-byte aligned
        if self.percpu:
            assert ct.sizeof(value_type) % 8 == 0, "per-CPU values must be 8-byte multiples"
            self.Slot = value_type * self.ncpu
        else:
            self.Slot = value_type

    @classmethod
    def pinned(cls, path: str, key_type, value_type) -> "Map":
        return cls(sys_.obj_get(path), key_type, value_type, name=os.path.basename(path), owns_fd=True)

    def close_keyed_reads(self) -> None:
        """Unload the keyed reader (the next prepare_keyed_reads loads it again)."""
        if self._reader:
            self._reader.close()
        self._reader = None

    def close(self):
        self.close_keyed_reads()
        if self._owns and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def max_entries(self) -> int:
        return self.info.max_entries

    # ---- single entries ----
    def get(self, key):
        v = self.Slot()
        r = sys_.map_elem(sys_.MAP_LOOKUP_ELEM, self.fd, key, v)
        if r == errno.ENOENT:
            return None
        if r:
            raise BpfError(f"lookup in {self.name}: {os.strerror(r)}")
        return v

    def put(self, key, value, flags: int = sys_.BPF_ANY) -> None:
        r = sys_.map_elem(sys_.MAP_UPDATE_ELEM, self.fd, key, value, flags)
        if r:
            raise BpfError(f"update of {self.name}: {os.strerror(r)}")

    def delete(self, key) -> bool:
        r = sys_.map_elem(sys_.MAP_DELETE_ELEM, self.fd, key)
        if r and r != errno.ENOENT:
            raise BpfError(f"delete from {self.name}: {os.strerror(r)}")
        return r == 0

    def keys(self):
        """Per-entry walk (get-next-key): the slow path, kept for small maps and as a baseline."""
        k, nxt = self.Key(), self.Key()
        first = True
        while sys_.map_elem(sys_.MAP_GET_NEXT_KEY, self.fd, None if first else k, nxt) == 0:
            first = False
            ct.memmove(ct.addressof(k), ct.addressof(nxt), ct.sizeof(k))
            out = self.Key()
            ct.memmove(ct.addressof(out), ct.addressof(k), ct.sizeof(k))
            yield out

    def items(self):
        for k in self.keys():
            v = self.get(k)
            if v is not None:
                yield k, v

    def sum_percpu(self, key, field: str | None = None) -> int:
        """Sum of a per-CPU counter (or of one field of a per-CPU struct) over CPUs."""
        v = self.get(key)
        if v is None:
            return 0
        return sum(getattr(x, field) if field else x for x in v) if self.percpu else (getattr(v, field) if field else v)

    # ---- batches ----
    EXPORT_FIRST = 4096      # entries in the first batch; it doubles while more come

    def export_batches(self, most: int, capacity: int | None = None):
        """The entries as the kernel hands them over, (count, keys array, values array) per
        BPF_MAP_LOOKUP_BATCH (a hash map's batch ends on a bucket), each in buffers of its own: a
        consumer may work on one batch while the next is read. Batches start at EXPORT_FIRST
        entries and double up to `most` (small tables stay cheap)."""
        cap = capacity or self.max_entries
        in_b, out_b = ct.c_uint64(0), ct.c_uint64(0)   # hash tokens are u32; u64 fits any map kind
        most = max(1, min(cap, most))
        step = min(most, self.EXPORT_FIRST)
        total, first = 0, True
        while total < cap:
            keys, vals = (self.Key * step)(), (self.Slot * step)()
            n, err = sys_.map_batch(sys_.MAP_LOOKUP_BATCH, self.fd, ct.addressof(keys), ct.addressof(vals),
                                    min(step, cap - total), None if first else in_b, out_b)
            if err == errno.ENOSPC and n == 0 and step < cap:
                step = min(cap, step * 2)     # a hash bucket holds more entries than the buffer
                continue
            if err and err != errno.ENOENT:
                raise BpfError(f"batch lookup of {self.name}: {os.strerror(err)}")
            if n:
                yield n, keys, vals
            total += n
            first = False
            if err == errno.ENOENT:
                return
            in_b.value = out_b.value
            step = min(most, step * 2)

    def export(self, capacity: int | None = None):
        """All entries as (count, keys array, values array), via BPF_MAP_LOOKUP_BATCH. The
        buffers start small and grow: sizing them for max_entries up front cost ~9 ms per
        export of an empty 256k-entry table (zeroing ~40 MB)."""
        cap = capacity or self.max_entries
        ksz, vsz = ct.sizeof(self.Key), ct.sizeof(self.Slot)
        in_b, out_b = ct.c_uint64(0), ct.c_uint64(0)
        step = min(cap, self.EXPORT_FIRST)
        keys, vals = (self.Key * step)(), (self.Slot * step)()
        parts: list[tuple[bytes, bytes]] = []
        total, first = 0, True
        while total < cap:
            n, err = sys_.map_batch(sys_.MAP_LOOKUP_BATCH, self.fd, ct.addressof(keys), ct.addressof(vals),
                                    min(step, cap - total), None if first else in_b, out_b)
            if err == errno.ENOSPC and n == 0 and step < cap:
                # a hash bucket holds more entries than the buffer: the same batch, larger
                step = min(cap, step * 2)
                keys, vals = (self.Key * step)(), (self.Slot * step)()
                continue
            if first and err == errno.ENOENT:
                return n, keys, vals          # all of it in one batch: no copy
            parts.append((bytes(memoryview(keys).cast("B")[:n * ksz]), bytes(memoryview(vals).cast("B")[:n * vsz])))
            total += n
            first = False
            if err == errno.ENOENT:
                break
            if err:
                raise BpfError(f"batch lookup of {self.name}: {os.strerror(err)}")
            in_b.value = out_b.value
            if step < cap:
                step = min(cap, step * 2)
                keys, vals = (self.Key * step)(), (self.Slot * step)()
        k, v = (self.Key * total)(), (self.Slot * total)()
        at = 0
        for kb, vb in parts:
            ct.memmove(ct.addressof(k) + at * ksz, kb, len(kb))
            ct.memmove(ct.addressof(v) + at * vsz, vb, len(vb))
            at += len(kb) // ksz
        return total, k, v

    def read_from(self, first: int, count: int) -> tuple[int, "ct.Array", "ct.Array"]:
        """An array map's entries first .. first+count-1 (fewer at its end) in one batch lookup:
        (count, keys, values). The batch continues after the key it is given, so first-1."""
        keys, vals = (self.Key * count)(), (self.Slot * count)()
        after, out_b = ct.c_uint64(max(first - 1, 0)), ct.c_uint64(0)
        n, err = sys_.map_batch(sys_.MAP_LOOKUP_BATCH, self.fd, ct.addressof(keys), ct.addressof(vals), count,
                                after if first > 0 else None, out_b)
        if err and err != errno.ENOENT:
            raise BpfError(f"batch lookup of {self.name} from {first}: {os.strerror(err)}")
        return n, keys, vals

    def prepare_keyed_reads(self) -> bool:
        """Load this map's keyed reader (loader/keyread.py), for lookup_many to read many keys a
        syscall; False where the map cannot have one (it then reads a key a syscall). Worth
        doing before a time-critical read: the first build compiles (0.7 s here)."""
        if self._reader is None:
            from .keyread import KeyReader
            self._reader = KeyReader.for_map(self.fd, self.info) or False
        return bool(self._reader)

    def _keyed_read(self, keys):
        try:
            found, vb = self._reader.read(bytes(memoryview(keys).cast("B")))
        except BpfError as e:
            # a reader that fails is a bug: key by key from here on, slower and still right
            log.warning("map %s: keyed reads failed (%s): reading a key a syscall", self.name, e)
            self._reader.close()
            self._reader = False
            return None
        return found, (self.Slot * len(found)).from_buffer_copy(vb)

    def lookup_many(self, keys) -> tuple[int, "ct.Array", "ct.Array"]:
        """The entries of these keys (a ctypes array of Key) that exist: (count, keys, values),
        in the order asked. Through the keyed reader once prepare_keyed_reads() has loaded one."""
        n = len(keys)
        got = self._keyed_read(keys) if self._reader else None
        if got is not None:
            found, vals = got
            if len(found) == n:
                return n, keys, vals
            k = (self.Key * len(found))()
            for j, i in enumerate(found):
                k[j] = keys[i]
            return len(found), k, vals
        vals = (self.Slot * n)()
        found = sys_.map_lookup_many(self.fd, ct.addressof(keys), ct.sizeof(self.Key), n, ct.addressof(vals),
                                     ct.sizeof(self.Slot))
        if len(found) == n:
            return n, keys, vals
        k, v = (self.Key * len(found))(), (self.Slot * len(found))()
        for j, i in enumerate(found):
            k[j], v[j] = keys[i], vals[i]
        return len(found), k, v

    def update_batch(self, keys, values, count: int | None = None, flags: int = sys_.BPF_ANY) -> int:
        """Insert/replace `count` entries from ctypes arrays; returns how many the kernel took."""
        n = len(keys) if count is None else count
        if n == 0:
            return 0
        done, err = sys_.map_batch(sys_.MAP_UPDATE_BATCH, self.fd, ct.addressof(keys), ct.addressof(values),
                                   n, elem_flags=flags)
        if err:
            raise BpfError(f"batch update of {self.name}: {os.strerror(err)} after {done} of {n} entries")
        return done

    def delete_batch(self, keys, count: int | None = None) -> int:
        n = len(keys) if count is None else count
        if n == 0:
            return 0
        done, err = sys_.map_batch(sys_.MAP_DELETE_BATCH, self.fd, ct.addressof(keys), 0, n)
        if err and err != errno.ENOENT:
            raise BpfError(f"batch delete from {self.name}: {os.strerror(err)} after {done} of {n}")
        return done

    def clear(self) -> int:
        n, keys, _ = self.export()
        if self.info.type in (sys_.MAP_ARRAY, sys_.MAP_PERCPU_ARRAY):
            zero = (self.Slot * n)()
            return self.update_batch(keys, zero, n)
        return self.delete_batch(keys, n)

    def __len__(self) -> int:
        return self.export()[0]


def from_bcc(table, key_type, value_type) -> Map:
    """Wrap a BCC table (same fd, our mirror types)."""
    return Map(table.map_fd, key_type, value_type, name=table.name.decode() if isinstance(table.name, bytes) else table.name)


def stats_dict(m: Map) -> dict[str, int]:
    """A program's per-CPU verdict/reason counters (nfx_stats) summed, by name; zeros left out."""
    n, keys, vals = m.export()
    out = {}
    names = {s.value: s.name.lower() for s in L.Stat}
    for i in range(n):
        total = sum(vals[i])
        if total:
            out[names.get(keys[i], f"stat_{keys[i]}")] = total
    return out
