"""Load another copy of a program this process compiled, with fresh maps, without compiling again.

BCC leaves each function's instructions in its module with its maps' fds already written into
them (ld_imm64, src_reg BPF_PSEUDO_MAP_FD). An Image keeps those instructions and a description
of every map (bpf_map_info: type, sizes, flags, name, BTF types); Image.load() creates maps like
them, swaps the fds in the instructions and hands the program to the kernel, which verifies it
as it would a second compile's. A compile costs 1.1-1.7 s here (clang and the kernel headers);
a copy costs its maps and the verifier, as a compile's load does."""
import ctypes as ct
import os
import struct
from dataclasses import dataclass

from ..errors import BpfError
from . import bpfsys

LD_IMM64 = 0x18                         # BPF_LD | BPF_IMM | BPF_DW, two instruction slots
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2  # src_reg of an ld_imm64 whose imm is a map fd
INSN = struct.Struct("<BBhi")


@dataclass
class Image:
    license: bytes
    kern_version: int
    funcs: dict[str, bytes]             # function name -> instructions, as BCC compiled them
    maps: dict[str, bpfsys.MapInfo]     # map name -> what to create, in BCC's table order
    fd_names: dict[int, str]            # the fd an instruction carries -> map name
    btf: dict[int, int]                 # BTF object id -> our fd for it (maps' key/value types)

    @classmethod
    def of(cls, b) -> "Image":
        """The image of a compiled bcc.BPF; independent of it (b.cleanup() does not affect it)."""
        from .pin import table_calls
        lib = table_calls()
        m = b.module
        funcs = {}
        for i in range(lib.bpf_num_functions(m)):
            name = lib.bpf_function_name(m, i)
            funcs[name.decode()] = ct.string_at(lib.bpf_function_start(m, name), lib.bpf_function_size(m, name))
        maps, fd_names, btf = {}, {}, {}
        try:
            for i in range(lib.bpf_num_tables(m)):
                name = lib.bpf_table_name(m, i)
                fd = lib.bpf_table_fd(m, name)
                info = bpfsys.map_info(fd)
                if info.btf_id and info.btf_id not in btf:
                    btf[info.btf_id] = bpfsys.btf_fd_by_id(info.btf_id)
                maps[name.decode()] = info
                fd_names[fd] = name.decode()
        except BaseException:
            for fd in btf.values():
                os.close(fd)
            raise
        return cls(lib.bpf_module_license(m), lib.bpf_module_kern_version(m), funcs, maps, fd_names, btf)

    def load(self) -> "Copy":
        """A copy with fresh, empty maps; its functions load on demand (load_func), as BCC's do."""
        fds = {}
        try:
            for name, info in self.maps.items():
                fds[name] = bpfsys.map_create(info, self.btf.get(info.btf_id, 0))
                got = bpfsys.map_info(fds[name])
                if _kind(got) != _kind(info):
                    raise BpfError(f"map {name}: the copy differs from the compiled map")
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return Copy(self, fds)

    def close(self) -> None:
        for fd in self.btf.values():
            os.close(fd)
        self.btf = {}

    def insns_for(self, func: str, fds: dict[str, int]) -> bytes:
        """The function's instructions with every map fd replaced by the one in `fds` (by map name)."""
        code = bytearray(self.funcs[func])
        for off in range(0, len(code) - 8, 8):
            op, regs, o, imm = INSN.unpack_from(code, off)
            if op == LD_IMM64 and (regs >> 4) in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                if imm not in self.fd_names:
                    raise BpfError(f"{func}: instruction {off // 8} names fd {imm}, which is none of the program's maps")
                INSN.pack_into(code, off, op, regs, o, fds[self.fd_names[imm]])
        return bytes(code)


def _kind(i: bpfsys.MapInfo) -> tuple:
    return (i.type, i.key_size, i.value_size, i.max_entries, i.map_flags, i.name, i.btf_id,
            i.btf_key_type_id, i.btf_value_type_id, i.map_extra)


class _Table:
    """The one thing nfx reads of a BCC table: its map fd."""
    def __init__(self, fd: int):
        self.map_fd = fd


class Copy:
    """A loaded copy of an Image, used as nfx uses a bcc.BPF: b[name].map_fd, load_func(),
    table_names(), cleanup()."""

    def __init__(self, image: Image, fds: dict[str, int]):
        self.image = image
        self.fds = fds
        self.funcs = {}

    def __getitem__(self, name) -> _Table:
        name = name.decode() if isinstance(name, bytes) else name
        return _Table(self.fds[name])       # KeyError for a map the program lacks, as BCC

    def table_names(self) -> list[str]:
        return list(self.fds)

    def load_func(self, func_name, prog_type):
        import bcc
        name = func_name.decode() if isinstance(func_name, bytes) else func_name
        if name in self.funcs:
            return self.funcs[name]
        if name not in self.image.funcs:
            raise BpfError(f"unknown program {name}")
        fd = bpfsys.prog_load(prog_type, self.image.insns_for(name, self.fds), name,
                              self.image.license, self.image.kern_version)
        fn = self.funcs[name] = bcc.BPF.Function(self, name.encode(), fd)
        return fn

    def cleanup(self) -> None:
        for fn in self.funcs.values():
            os.close(fn.fd)
        for fd in self.fds.values():
            os.close(fd)
        self.funcs, self.fds = {}, {}
