"""Compile a build's programs at the same time, each in a forked child, while the build goes on.

BCC compiles in threads crash; in processes they don't. A child compiles one program, takes its
Image (loader/image.py) and sends it back over a socketpair: instructions and map descriptions
pickled, the BTF objects the maps' types live in as fds (SCM_RIGHTS). compile_source() in this
process then waits for that child instead of compiling and loads a copy; clang never runs here.
A child that fails sends nothing, and compile_source compiles here as before (and reports the
error as before). Children hold nothing but their own fds: killed or exited, nothing is left."""
import os
import pickle
import signal
import socket
import struct
import threading

from . import bpfsys, compile as comp
from .image import Image

_LEN = struct.Struct("<Q")
_HELD = {signal.SIGINT, signal.SIGTERM}


class Precompiled:
    """with Precompiled([(name, defines), ...]): children compile those the process has not;
    on the way out every child still running is killed and every child reaped."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.children: dict[tuple, tuple[int, socket.socket]] = {}

    def __enter__(self):
        # fork only a single-threaded process: another thread's locks would stay held in the child
        if threading.active_count() > 1:
            return self
        try:
            for name, defines in self.jobs:
                _, _, _, key = comp.source_key(name, defines)
                # compiled before, here or by an earlier process (loader/imagecache.py): no child
                if key is None or comp.cached(key) or key in self.children or comp.from_disk(key):
                    continue
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                # Ctrl-C and SIGTERM held off until the child is on its own and recorded here:
                # raised in the parent's at-fork hooks (logging's), the exception would be
                # swallowed and leave logging's lock taken
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
                try:
                    pid = os.fork()
                    if pid == 0:
                        _child(ours, theirs, name, defines, key)
                    self.children[key] = (pid, ours)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                theirs.close()
                comp._pending[key] = lambda key=key: self._receive(key)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _receive(self, key) -> Image | None:
        pid, sock = self.children.pop(key)
        try:
            return _read_image(sock)
        finally:
            sock.close()
            _end(pid)

    def __exit__(self, *exc) -> None:
        for key, (pid, sock) in list(self.children.items()):
            comp._pending.pop(key, None)
            sock.close()
            _end(pid)
        self.children.clear()


def _end(pid: int) -> None:
    """Kill (a child that sent its image is exiting anyway) and reap: no zombie, no orphan."""
    try:
        os.kill(pid, signal.SIGKILL)        # not reaped yet, so the pid is still this child's
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _child(ours: socket.socket, sock: socket.socket, name: str, defines, key) -> None:
    """Compile, send the Image, exit without running the parent's exit handlers."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's: it kills us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        ours.close()
        comp._pending.clear()                            # the parent's children are not ours
        comp.compile_source(name, defines)
        img = comp._compiled[key]
        data = pickle.dumps((img.license, img.kern_version, img.funcs,
                             {n: bytes(i) for n, i in img.maps.items()}, img.fd_names, list(img.btf)))
        socket.send_fds(sock, [_LEN.pack(len(data))], list(img.btf.values()))
        sock.sendall(data)
        status = 0
    except BaseException:
        pass
    finally:
        os._exit(status)


def _read_image(sock: socket.socket) -> Image | None:
    head, fds, _, _ = socket.recv_fds(sock, _LEN.size, 16)
    try:
        if len(head) != _LEN.size:
            raise EOFError
        want, data = _LEN.unpack(head)[0], bytearray()
        while len(data) < want:
            chunk = sock.recv(min(1 << 20, want - len(data)))
            if not chunk:
                raise EOFError
            data += chunk
        lic, kern, funcs, maps, fd_names, btf_ids = pickle.loads(data)
        if len(btf_ids) != len(fds):
            raise EOFError
    except BaseException as e:       # a short read, or Ctrl-C while reading: the fds go back
        for fd in fds:
            os.close(fd)
        if isinstance(e, EOFError):
            return None
        raise
    return Image(lic, kern, funcs, {n: bpfsys.MapInfo.from_buffer_copy(b) for n, b in maps.items()},
                 fd_names, dict(zip(btf_ids, fds)))
