"""Compile bpf/*.bpf.c with BCC: include path, feature defines, errors that say what failed."""
import contextlib
import os
import re
import sys
import tempfile

from ..errors import BpfError, KernelFeature
from ..paths import BPF_DIR, BPF_INCLUDE


def _bcc():
    try:
        import bcc
    except ImportError:
        raise KernelFeature("BCC's Python bindings are missing",
                            hint="run scripts/bootstrap.sh (Debian's python3-bpfcc, a venv with system site packages)") from None
    return bcc


@contextlib.contextmanager
def _captured_stderr(keep):
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


_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def expand_includes(text: str, seen: set[str] | None = None) -> str:
    """Inline the project's quoted includes. BCC rewrites map method calls (`m.lookup()`)
    only in the main file, so shared helpers that touch maps must be part of it."""
    seen = set() if seen is None else seen

    def sub(m):
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        path = BPF_INCLUDE / name
        if not path.exists():
            raise BpfError(f"include {name!r} not found in {BPF_INCLUDE}")
        return f'#line 1 "{name}"\n' + expand_includes(path.read_text(), seen)

    return _QUOTED_INCLUDE.sub(sub, text)


def compile_source(name: str, defines: dict[str, object] | None = None, path=None):
    """Compile bpf/<name>.bpf.c (or the file at `path`, with the project's includes); returns a bcc.BPF."""
    bcc = _bcc()
    from pathlib import Path
    path = Path(path) if path is not None else BPF_DIR / f"{name}.bpf.c"
    if not path.exists():
        raise BpfError(f"no BPF source {path}")
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(build):
        raise KernelFeature(f"no kernel headers at {build}",
                            hint="run scripts/bootstrap.sh to install and link the nearest Debian headers")
    cflags = ["-w", f"-I{BPF_INCLUDE}"] + [f"-D{k}={v}" for k, v in (defines or {}).items()]
    # compiler diagnostics go straight to stderr: an LLVM assertion aborts the process, and a
    # captured message would die with it
    try:
        return bcc.BPF(text=expand_includes(path.read_text()).encode(), cflags=cflags)
    except Exception as e:
        raise BpfError(f"compiling {path.name} failed: {e} (compiler messages above)") from None


def load(b, fn_name: str, kind: str = "xdp"):
    """Load one function of a compiled object as an XDP or tc (SCHED_CLS) program."""
    bcc = _bcc()
    prog_type = {"xdp": bcc.BPF.XDP, "tc": bcc.BPF.SCHED_CLS}[kind]
    log: list[str] = []
    try:
        with _captured_stderr(log):
            return b.load_func(fn_name.encode(), prog_type)
    except Exception as e:
        raise BpfError(f"the verifier rejected {fn_name}: {e}\n{log[0][-6000:]}") from None
