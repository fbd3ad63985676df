"""The testbed registry: one JSON file per testbed under /run/nfx/testbeds/, written before each
thing is created, so teardown removes exactly what was made even after a failure half way.
`Testbed` is that record (a dict, saved as it is) with typed views of its nodes."""
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AlreadyExists, BadInput, NotFound
from .paths import PIN_ROOT, RUN_DIR

DIR = RUN_DIR / "testbeds"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
AGENT_PORT = 7700          # where an agent listens when its entry names no port


def check_name(name: str) -> str:
    # netns and pin names are built from it; interface names must stay under 16 chars
    if not NAME_RE.match(name):
        raise BadInput(f"bad testbed name {name!r}: 1-8 characters, lowercase letters and digits, starting with a letter")
    return name


def path(name: str) -> Path:
    return DIR / f"{name}.json"


def pin_root(name: str) -> Path:
    return PIN_ROOT / name


@dataclass(frozen=True)
class NfNode:
    """One NF instance as the registry records it (rec["nodes"][name] plus its management address)."""
    testbed: str
    name: str
    ns: str
    kind: str
    pin: Path
    wiring: tuple[str, ...]                 # (inside, outside) interface names
    release_if: str | None
    index: int
    peer_slots: dict[str, int]              # other instance -> tx devmap slot toward it
    ifaces: dict[str, str]                  # neighbour node -> interface name
    agent_addr: str | None                  # None until the management bridge exists
    agent_port: int
    agent_pid: int | None = None
    agent_log: str | None = None
    build: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SwitchNode:
    name: str
    ns: str
    pin: Path
    ports: tuple[str, ...]
    ifaces: dict[str, str]


@dataclass(frozen=True)
class HostNode:
    name: str
    ns: str
    addr: str | None
    mac: str | None
    ifname: str | None
    gen_if: str | None                      # set on the host the generator sends from
    ifaces: dict[str, str]


@dataclass(frozen=True)
class Mgmt:
    """The management bridge: its netns, the controller's address, one address per agent."""
    ns: str
    bridge: str
    controller: str
    agents: dict[str, str]


class Testbed(dict):
    """The registry entry; `save()` after every change."""

    @classmethod
    def load(cls, name: str) -> "Testbed":
        check_name(name)
        try:
            return cls(json.loads(path(name).read_text()))
        except FileNotFoundError:
            raise NotFound(f"no testbed {name!r}", hint="nfx testbed status lists the running ones") from None

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

    # ---- typed views ----
    @property
    def name(self) -> str:
        return self["name"]

    @property
    def token(self) -> str | None:
        return self.get("token")

    @property
    def mgmt(self) -> Mgmt | None:
        m = self.get("mgmt")
        return Mgmt(m["ns"], m["bridge"], m["controller"], dict(m["agents"])) if m else None

    def _role(self, role: str) -> list[str]:
        return [n for n, i in self.get("nodes", {}).items() if i.get("role") == role]

    def clusters_in_force(self) -> dict[str, list[str]]:
        """The clusters that share now (`nfx cluster up`'s, as failovers changed them), else the
        topology's."""
        return (self.get("sharing") or {}).get("clusters") or self.get("clusters") or {}

    def via_mgmt(self, host: str) -> bool:
        """Whether `host` is reached from the management namespace: an address of the testbed's
        management network, or of the one a join routes to (nfx/testbed/join.py)."""
        mg, j = self.get("mgmt") or {}, self.get("join") or {}
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        nets = [n for n in (mg.get("net"), j.get("peer_net"), j.get("transit")) if n]
        return host == mg.get("controller") or any(ip in ipaddress.IPv4Network(n) for n in nets)

    def borrowed(self) -> list[str]:
        """The instance the joined testbed lends this one, as this one names it (["nf1@B"])."""
        j = self.get("join") or {}
        if not j:
            return []
        try:
            lent = lent_by(j["peer"])
        except NotFound:
            return []
        return [f"{lent}{SITE_SEP}{j['peer']}"] if lent else []

    def instances(self) -> list[str]:
        """The NF instances' node names (nf0, nf1, ...)."""
        return self._role("nf")

    def nf(self, inst: str) -> NfNode:
        """NotFound for a name that is no NF instance or one whose program was never pinned."""
        nfs = self.instances()
        if inst not in nfs:
            raise NotFound(f"no NF instance {inst!r} in testbed {self.name}", hint=f"instances: {', '.join(nfs) or 'none'}")
        n = self["nodes"][inst]
        if "pin" not in n or "kind" not in n:
            raise NotFound(f"instance {inst} of {self.name} was never built (no pins recorded)")
        agent = n.get("agent") or {}
        return NfNode(testbed=self.name, name=inst, ns=n["ns"], kind=n["kind"], pin=Path(n["pin"]),
                      wiring=tuple(n.get("wiring") or ()), release_if=n.get("release_if"), index=n.get("index", 0),
                      peer_slots=dict(n.get("peer_slots") or {}), ifaces=dict(n.get("ifaces") or {}),
                      agent_addr=(self.get("mgmt") or {}).get("agents", {}).get(inst),
                      agent_port=agent.get("port") or AGENT_PORT, agent_pid=agent.get("pid"), agent_log=agent.get("log"),
                      build=dict(n.get("build") or {}))

    def switches(self) -> list[SwitchNode]:
        return [SwitchNode(s, n["ns"], Path(n["pin"]), tuple(n.get("ports") or ()), dict(n.get("ifaces") or {}))
                for s in self._role("switch") if "pin" in (n := self["nodes"][s])]

    def hosts(self) -> list[HostNode]:
        return [HostNode(h, n["ns"], n.get("addr"), n.get("mac"), n.get("ifname"), n.get("gen_if"),
                         dict(n.get("ifaces") or {}))
                for h in self._role("host") for n in (self["nodes"][h],)]


def new(name: str, **fields) -> Testbed:
    check_name(name)
    if path(name).exists():
        raise AlreadyExists(f"testbed {name!r} already exists", hint=f"nfx testbed down --name {name}")
    r = Testbed(name=name, status="building", owner_pid=os.getpid(), **fields)
    r.save()
    return r


def load(name: str) -> Testbed:
    return Testbed.load(name)


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
    path(name).with_suffix(".tmp").unlink(missing_ok=True)     # a save cut short (a process killed in it)


SITE_SEP = "@"


def split_instance(name: str) -> tuple[str, str | None]:
    """"nf1@B" (instance nf1 of the joined testbed B, lent: nfx/testbed/lend.py) -> ("nf1", "B");
    "nf1" -> ("nf1", None)."""
    inst, sep, tb = name.partition(SITE_SEP)
    if sep and (not inst or not tb):
        raise BadInput(f"bad instance {name!r}: a joined testbed's instance is INSTANCE{SITE_SEP}TESTBED")
    return inst, (tb if sep else None)


def view(name: str, home: str, viewer: str) -> str:
    """Instance `name` as testbed `home` writes it, as testbed `viewer` writes it: nf0 of A is
    "nf0" to A and "nf0@A" to B; "nf1@B" to A is "nf1" to B."""
    inst, tb = split_instance(name)
    tb = tb or home
    return inst if tb == viewer else f"{inst}{SITE_SEP}{tb}"


def as_seen_by(name: str, home: str, by: str) -> str:
    """Instance `name` as testbed `home` writes it, as the agent of instance `by` (as `home`
    writes that one too) knows it: view() from `by`'s own testbed."""
    return view(name, home, split_instance(by)[1] or home)


def lent_by(name: str) -> str | None:
    """The instance testbed `name` lends the one it is joined to (nfx testbed lend), if any."""
    return ((load(name).get("join") or {}).get("lent") or {}).get("instance")


def joined_node(rec, name: str) -> tuple["Testbed", str]:
    """For an instance of the testbed `rec`'s is joined to ("nf1@B"): B's record and "nf1".
    What an agent connection needs, lent or not (agents share state and beat across the routed
    link); the switches reach only a lent one (remote_instance)."""
    inst, tb = split_instance(name)
    j = rec.get("join") or {}
    if tb is None or j.get("peer") != tb:
        raise BadInput(f"{name}: testbed {rec['name']} is not joined to {tb}",
                       hint=f"nfx testbed join --name {rec['name']} --peer {tb}")
    return load(tb), inst


def remote_instance(rec, name: str) -> tuple[str, str] | None:
    """For "nf1@B": (B, nf1), once checked that `rec`'s testbed is joined to B and B lends it nf1
    (nfx testbed lend); None for a local name. On two machines the lent instance would be read
    from the shared etcd; here both records are on this machine."""
    inst, tb = split_instance(name)
    if tb is None:
        return None
    j = rec.get("join") or {}
    if j.get("peer") != tb:
        raise BadInput(f"{name}: testbed {rec['name']} is not joined to {tb}",
                       hint=f"nfx testbed join --name {rec['name']} --peer {tb}")
    lent = lent_by(tb)
    if lent != inst:
        raise BadInput(f"{name}: testbed {tb} does not lend {inst} to {rec['name']}"
                       + (f" (it lends {lent})" if lent else ""), hint=f"nfx testbed lend --name {tb} --instance {inst}")
    return tb, inst
