"""Compile bpf/*.bpf.c with BCC: include path, feature defines, errors that say what failed."""
import contextlib
import os
import sys
import tempfile
import threading

from ..errors import BpfError, KernelFeature
from ..layout.hashing import QUOTED_INCLUDE as _QUOTED_INCLUDE
from ..paths import BPF_DIR, BPF_INCLUDE, RUN_DIR
from . import imagecache
from .image import Image

COMPILE_LOG = RUN_DIR / "compile.log"


def verbose() -> bool:
    """Compiler messages on the terminal (`nfx --verbose`, NFX_VERBOSE=1) instead of COMPILE_LOG."""
    return os.environ.get("NFX_VERBOSE", "") not in ("", "0")


def _bcc():
    try:
        import bcc
    except ImportError:
        raise KernelFeature("BCC's Python bindings are missing",
                            hint="run scripts/bootstrap.sh (Debian's python3-bpfcc, a venv with system site packages)") from None
    return bcc


@contextlib.contextmanager
def captured_stderr(keep):
    """BCC and the verifier print on fd 2; collect it so an error can carry it."""
    with tempfile.TemporaryFile(mode="w+") as err:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            err.seek(0)
            keep.append(err.read())


def expand_includes(text: str, seen: set[str] | None = None, name: str = "main") -> str:
    """Inline the project's quoted includes. BCC rewrites map method calls (`m.lookup()`)
    only in the main file, so shared helpers that touch maps must be part of it. `#line`
    markers before and after each inlined file keep diagnostics pointing at the real line."""
    seen = set() if seen is None else seen

    def sub(m):
        inc = m.group(1)
        if inc in seen:
            return ""
        seen.add(inc)
        path = BPF_INCLUDE / inc
        if not path.exists():
            raise BpfError(f"include {inc!r} not found in {BPF_INCLUDE}")
        resume = text.count("\n", 0, m.end()) + 2       # the line after the #include
        return (f'#line 1 "{inc}"\n' + expand_includes(path.read_text(), seen, inc)
                + f'\n#line {resume} "{name}"')

    return _QUOTED_INCLUDE.sub(sub, text)


# (file, text, cflags) -> Image of the first compile in this process: a program compiled again
# with the same source and defines (two switches, two NF instances, a second rig) is loaded as
# a copy with fresh maps instead (loader/image.py)
_compiled: dict[tuple, Image] = {}
# key -> a call that waits for a child compiling it (loader/precompile.py): its Image or None
_pending: dict[tuple, object] = {}
# one thread at a time takes a child's Image (loader/parallel.py loads copies in threads)
_taking = threading.Lock()


def compile_source(name: str, defines: dict[str, object] | None = None, path=None):
    """Compile bpf/<name>.bpf.c (or the file at `path`, with the project's includes); returns a
    bcc.BPF, or a loader.image.Copy (fresh maps, same instructions) when this process compiled
    the same text with the same defines before (or a child did for it: loader/precompile.py).
    Built with NFX_PIN_DIR (maps taken over from pins) it always compiles: a copy would make
    fresh maps where the compile opens the pinned."""
    bcc = _bcc()
    path, text, cflags, key = source_key(name, defines, path)
    if _take(key) is not None or from_disk(key):
        return _compiled[key].load()
    b = _compile(bcc, path, text, cflags, defines)
    if key is not None:
        _compiled[key] = Image.of(b)
        imagecache.save(key, _compiled[key])      # the next process loads it instead of compiling
    return b


def size_class(n: int, least: int = 64) -> int:
    """A size define rounded up to a power of two (at least `least`): a program whose arrays are
    capacities, with the count it uses set at run time, then compiles once per class, not once
    per count (a compile is 1.1-1.7 s of CPU; the image cache holds one per define set)."""
    return 1 << (max(n, least) - 1).bit_length()


def source_key(name: str, defines: dict | None = None, path=None):
    """(path, text, cflags, cache key); the key is None for a build that must always compile."""
    from pathlib import Path
    path = Path(path) if path is not None else BPF_DIR / f"{name}.bpf.c"
    if not path.exists():
        raise BpfError(f"no BPF source {path}")
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(build):
        raise KernelFeature(f"no kernel headers at {build}",
                            hint="run scripts/bootstrap.sh to install and link the nearest Debian headers")
    cflags = ["-w", f"-I{BPF_INCLUDE}"] + [f"-D{k}={v}" for k, v in (defines or {}).items()]
    text = expand_includes(path.read_text(), name=path.name).encode()
    key = None if "NFX_PIN_DIR" in (defines or {}) else (str(path), text, tuple(cflags))
    return path, text, cflags, key


def cached(key) -> bool:
    return key in _compiled or key in _pending


def _take(key) -> Image | None:
    """The Image compiled for `key` in this process or by a child (waiting for it), or None."""
    with _taking:
        if key in _pending:
            img = _pending.pop(key)()
            if img is not None:
                _compiled[key] = img
        return _compiled.get(key)


def from_disk(key) -> bool:
    """The Image of `key` from the disk cache (loader/imagecache.py) into this process's."""
    if key is None or os.environ.get("NFX_NO_IMAGE_CACHE", "") not in ("", "0"):
        return False
    img = imagecache.load(key)
    if img is None:
        return False
    with _taking:
        _compiled.setdefault(key, img)
    if _compiled[key] is not img:
        img.close()
    return True


def compiled_image(name: str, defines: dict | None = None) -> Image | None:
    """The Image of bpf/<name>.bpf.c with `defines` if this process (or a child for it) has
    compiled it, else None: never compiles, so any thread may call it (BCC compiles in threads
    crash)."""
    return _take(source_key(name, defines)[3])


def _compile(bcc, path, text: bytes, cflags: list[str], defines):
    if verbose():
        try:
            return bcc.BPF(text=text, cflags=cflags)
        except Exception as e:
            raise BpfError(f"compiling {path.name} failed: {e} (compiler messages above)") from None
    # LLVM's remarks (-w does not silence them) go to a log the user can read; the log is a
    # file, not a pipe, so what the compiler said survives an LLVM abort of this process
    with _stderr_to_log(path.name, defines) as log_at:
        try:
            return bcc.BPF(text=text, cflags=cflags)
        except Exception as e:
            said = _log_tail(log_at)
            raise BpfError(f"compiling {path.name} failed: {e}\n{said}".rstrip(),
                           hint=f"the whole compiler output is in {COMPILE_LOG}") from None


@contextlib.contextmanager
def _stderr_to_log(what: str, defines):
    """fd 2 appended to COMPILE_LOG for the duration; yields the offset this compile starts at."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    big = COMPILE_LOG.exists() and COMPILE_LOG.stat().st_size > (1 << 20)
    with open(COMPILE_LOG, "w" if big else "a") as log:
        log.write(f"--- {what} {defines or ''}\n")
        log.flush()
        start = log.tell()
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(log.fileno(), 2)
        try:
            yield start
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _log_tail(start: int, limit: int = 4000) -> str:
    with open(COMPILE_LOG, errors="replace") as log:
        log.seek(start)
        return log.read()[-limit:]


def load(b, fn_name: str, kind: str = "xdp"):
    """Load one function of a compiled object as an XDP or tc (SCHED_CLS) program."""
    bcc = _bcc()
    prog_type = {"xdp": bcc.BPF.XDP, "tc": bcc.BPF.SCHED_CLS}[kind]
    log: list[str] = []
    try:
        with captured_stderr(log):
            return b.load_func(fn_name.encode(), prog_type)
    except Exception as e:
        raise BpfError(f"the verifier rejected {fn_name}: {e}\n{log[0][-6000:]}") from None
