"""Pin a BCC object's maps under /sys/fs/bpf/nfx/... and find them again from another process;
lock a pin directory against a second writer."""
import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from ..errors import KernelFeature, NfxError
from . import bpfsys


def ensure_bpffs() -> None:
    if not os.path.ismount("/sys/fs/bpf"):
        raise KernelFeature("bpffs is not mounted at /sys/fs/bpf",
                            hint="mount -t bpf bpf /sys/fs/bpf (scripts/bootstrap.sh does it)")


def pin_maps(b, directory: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Pin every map of a compiled BCC object as <directory>/<map name>."""
    ensure_bpffs()
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for n in map_names(b):
        if n in skip:
            continue
        path = directory / n
        if path.exists():
            path.unlink()
        bpfsys.obj_pin(b[n.encode()].map_fd, str(path))
        names.append(n)
    return names


def map_names(b) -> list[str]:
    if hasattr(b, "table_names"):       # a loader.image.Copy
        return b.table_names()
    lib = table_calls()
    return [lib.bpf_table_name(b.module, i).decode() for i in range(lib.bpf_num_tables(b.module))]


def table_calls():
    """libbcc with its table-listing calls declared (BCC 0.26 declares the function ones, not
    these): without argtypes ctypes passes the module
    pointer as a C int, which cuts an address above 2^31 (BCC's module made on a thread other
    than the main one lives in a high arena: a segfault, seen in the orchestration loop's upgrade)."""
    import ctypes as ct
    from bcc.libbcc import lib
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_num_tables.restype = ct.c_size_t
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_size_t]
    lib.bpf_table_name.restype = ct.c_char_p
    return lib


def pin_prog(fd: int, path: Path) -> None:
    ensure_bpffs()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    bpfsys.obj_pin(fd, str(path))


def unpin(directory: Path) -> None:
    """Remove a pin directory; the objects die with their last reference."""
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        # prune empty parents up to the nfx root
        p = directory.parent
        while p.name and p != Path("/sys/fs/bpf") and p.exists() and not any(p.iterdir()):
            p.rmdir()
            p = p.parent


@contextlib.contextmanager
def locked(directory: Path, busy: NfxError):
    """Hold an exclusive lock on a pin directory (it lives as long as what it pins: no lock file
    to leave behind); raise `busy` at once if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield
    finally:
        os.close(fd)
