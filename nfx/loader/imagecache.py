"""Compiled programs kept on disk between processes, so clang runs once per source, defines,
kernel and BCC, not once per `nfx` command (1.1-1.7 s of CPU a program here).

An entry is an Image (loader/image.py): the instructions as BCC compiled them, the maps'
descriptions and the raw BTF their key and value types live in. Loading one makes the BTF
objects again (BPF_BTF_LOAD) and hands back an Image whose copies load like any other: the
kernel verifies each copy, so a stale or damaged entry can fail a load, never run unverified
code. Entries live in RUN_DIR (tmpfs: gone at reboot, when the kernel may change), root's
own (0700); anything unreadable, foreign or of another format is ignored and compiled again."""
import hashlib
import os
import pickle
import stat

from ..paths import RUN_DIR
from . import bpfsys
from .image import Image

CACHE_DIR = RUN_DIR / "images"
FORMAT = 1


def entry_name(key) -> str:
    """The file of compile cache key `key` (compile.source_key): its source, cflags, this
    kernel and this BCC."""
    import bcc
    h = hashlib.sha256()
    for part in (str(FORMAT), key[0], os.uname().release, getattr(bcc, "__version__", "?"), *key[2]):
        h.update(part.encode() + b"\0")
    h.update(key[1])
    return h.hexdigest()[:32] + ".img"


def save(key, img: Image) -> None:
    """Best effort: a cache that cannot be written is a compile next time."""
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        btf = {bid: bpfsys.btf_data(fd)[1] for bid, fd in img.btf.items()}
        data = pickle.dumps((FORMAT, img.license, img.kern_version, img.funcs,
                             {n: bytes(i) for n, i in img.maps.items()}, img.fd_names, btf))
        path = CACHE_DIR / entry_name(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except (OSError, pickle.PickleError, ImportError):
        pass


def load(key) -> Image | None:
    """The cached Image of `key`, its BTF made again; None on a miss or anything amiss."""
    try:
        path = CACHE_DIR / entry_name(key)
        st = os.stat(path)
        d = os.stat(CACHE_DIR)
        # written by this user and writable by no one else: pickle runs what it reads
        if st.st_uid != os.getuid() or d.st_uid != os.getuid() or (st.st_mode | d.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        fmt, lic, kern, funcs, maps, fd_names, btf = pickle.loads(path.read_bytes())
    except (OSError, pickle.PickleError, ImportError, ValueError, EOFError, TypeError):
        return None
    if fmt != FORMAT:
        return None
    fds: dict[int, int] = {}
    try:
        new_id = {}
        for old, raw in btf.items():
            fd = bpfsys.btf_load(raw)
            new_id[old] = bpfsys.btf_data(fd)[0]
            fds[new_id[old]] = fd
        infos = {}
        for name, b in maps.items():
            info = bpfsys.MapInfo.from_buffer_copy(b)
            if info.btf_id:
                info.btf_id = new_id[info.btf_id]
            infos[name] = info
    except Exception:   # noqa: BLE001 (a BTF the kernel refuses now, a damaged entry: compile)
        for fd in fds.values():
            os.close(fd)
        return None
    return Image(lic, kern, funcs, infos, fd_names, fds)
