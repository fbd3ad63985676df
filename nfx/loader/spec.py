"""Typed map specs: each BPF program declares its maps once, as a MapSet class whose attributes
are MapSpecs (the C map's name, key and value layouts). Opening the set, from the program's pins
or from its BCC object, fails naming every declared map that is not there (a missing pin used to
be skipped, and the first use failed far away), and gives typed handles:

    class GenMaps(MapSet):
        gen_cfg = MapSpec(L.u32, L.GenCfg)      # the attribute is the C map's name
    maps = GenMaps.from_bcc(b)
    maps.gen_cfg.put(...)          # a loader.maps.Map
    maps["gen_cfg"]                # the same, through the read-only mapping view

A subclass adds maps to its parent's (an NF's own tables on top of the maps every NF has)."""
import ctypes as ct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BpfError
from . import bpfsys
from .maps import Map


@dataclass(frozen=True)
class MapSpec:
    key: type
    value: type
    alt_values: tuple = ()    # value layouts another build may use (a hot upgrade's), told apart by size
    optional: bool = False    # may be absent (instances built before the map existed)
    name: str = field(default="", init=False)   # the C map's name (its pin's file name): the attribute's

    def __set_name__(self, owner, attr: str) -> None:
        object.__setattr__(self, "name", attr)

    def __get__(self, maps, owner=None):
        # on the class: the spec; on an opened set: the map (None for an absent optional one)
        if maps is None:
            return self
        return maps._maps.get(self.name)

    def _value_for(self, value_size: int) -> type:
        return next((v for v in (self.value, *self.alt_values) if ct.sizeof(v) == value_size), self.value)

    def open_pinned(self, path: Path) -> Map:
        v = self._value_for(bpfsys.map_info_path(str(path)).value_size) if self.alt_values else self.value
        return Map.pinned(str(path), self.key, v)

    def from_bcc(self, b) -> Map:
        fd = b[self.name.encode()].map_fd
        v = self._value_for(bpfsys.map_info(fd).value_size) if self.alt_values else self.value
        return Map(fd, self.key, v, name=self.name)


class MapSet(Mapping):
    """The opened maps of one program: attributes by name (typed), or a read-only mapping."""

    def __init__(self, maps: dict[str, Map]):
        self._maps = maps

    @classmethod
    def by_name(cls) -> dict[str, MapSpec]:
        """Every declared map, by name (the parent's first)."""
        out = {}
        for c in reversed(cls.__mro__):
            out.update({n: s for n, s in vars(c).items() if isinstance(s, MapSpec)})
        return out

    @classmethod
    def _missing(cls, have) -> None:
        missing = [s.name for s in cls.by_name().values() if not s.optional and not have(s.name)]
        if missing:
            raise BpfError(f"{cls.__name__}: declared map{'s' if len(missing) > 1 else ''} missing: "
                           f"{', '.join(missing)}", hint="the program was built from other sources: "
                           "rebuild or restart the instance")

    @classmethod
    def open_pinned(cls, directory: Path) -> "MapSet":
        """The maps pinned under `directory` (any process)."""
        directory = Path(directory)
        cls._missing(lambda n: (directory / n).exists())
        return cls._open(lambda s: s.open_pinned(directory / s.name) if (directory / s.name).exists() else None)

    @classmethod
    def from_bcc(cls, b) -> "MapSet":
        """The maps of a program this process compiled (BCC object)."""
        def has(name):
            try:
                b[name.encode()]
                return True
            except KeyError:
                return False
        cls._missing(has)
        return cls._open(lambda s: s.from_bcc(b) if has(s.name) else None)

    @classmethod
    def _open(cls, one) -> "MapSet":
        maps = {}
        try:
            for s in cls.by_name().values():
                m = one(s)
                if m is not None:
                    maps[s.name] = m
        except BaseException:
            for m in maps.values():
                m.close()
            raise
        return cls(maps)

    def close(self) -> None:
        for m in self._maps.values():
            m.close()

    # ---- the mapping view (string keys; attribute access is the typed way) ----
    def __getitem__(self, name: str) -> Map:
        return self._maps[name]

    def __iter__(self):
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._maps)})"
