"""The testbed registry: one JSON file per testbed under /run/nfx/testbeds/, written before each
thing is created, so teardown removes exactly what was made even after a failure half way."""
import json
import os
import re
from pathlib import Path

from ..errors import AlreadyExists, BadInput, NotFound
from ..paths import PIN_ROOT, RUN_DIR

DIR = RUN_DIR / "testbeds"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def check_name(name: str) -> str:
    # netns and pin names are built from it; interface names must stay under 16 chars
    if not NAME_RE.match(name):
        raise BadInput(f"bad testbed name {name!r}: 1-8 characters, lowercase letters and digits, starting with a letter")
    return name


def path(name: str) -> Path:
    return DIR / f"{name}.json"


def pin_root(name: str) -> Path:
    return PIN_ROOT / name


class Record(dict):
    """The registry entry; `save()` after every change."""

    def save(self) -> None:
        # 0600: the record holds the token every agent of the testbed asks for
        DIR.mkdir(parents=True, exist_ok=True)
        tmp = path(self["name"]).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            f.write(json.dumps(self, indent=1))
        os.replace(tmp, path(self["name"]))

    def register(self, kind: str, item) -> None:
        self.setdefault("created", {}).setdefault(kind, []).append(item)
        self.save()


def new(name: str, **fields) -> Record:
    check_name(name)
    if path(name).exists():
        raise AlreadyExists(f"testbed {name!r} already exists", hint=f"nfx testbed down --name {name}")
    r = Record(name=name, status="building", owner_pid=os.getpid(), **fields)
    r.save()
    return r


def load(name: str) -> Record:
    check_name(name)
    try:
        return Record(json.loads(path(name).read_text()))
    except FileNotFoundError:
        raise NotFound(f"no testbed {name!r}", hint="nfx testbed status lists the running ones") from None


def names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.json")) if DIR.exists() else []


def orphaned(name: str) -> bool:
    """Still 'building' but the process building it is gone (it crashed before cleaning up)."""
    try:
        r = load(name)
    except Exception:
        return False
    if r.get("status") != "building":
        return False
    pid = r.get("owner_pid")
    return not pid or not os.path.exists(f"/proc/{pid}")


def remove(name: str) -> None:
    path(name).unlink(missing_ok=True)
