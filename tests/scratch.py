"""Throwaway namespaces and veth pairs for root tests: unique short names, everything created is
registered and removed in teardown, even when the test fails half way."""
import contextlib
import os
import secrets

from nfx.loader import netns

PEER_IN, PEER_OUT = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


class Scratch:
    def __init__(self, prefix: str):
        self.tag = prefix + secrets.token_hex(2)
        self.namespaces: list[str] = []

    def ns(self, role: str) -> str:
        name = f"{self.tag}{role}"
        netns.add(name)
        self.namespaces.append(name)
        return name

    def veth(self, a: str, ns_a: str, b: str, ns_b: str, addr_a: str | None = None, addr_b: str | None = None):
        netns.ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for dev, ns, addr in ((a, ns_a, addr_a), (b, ns_b, addr_b)):
            if addr:
                netns.ip("addr", "add", addr, "dev", dev, ns=ns)
            netns.ip("link", "set", dev, "up", ns=ns)

    def close(self):
        for name in reversed(self.namespaces):
            netns.delete(name)
        self.namespaces.clear()


def pin_dir(tag: str):
    from pathlib import Path
    return Path(f"/sys/fs/bpf/nfx/{tag}-{os.getpid()}")


@contextlib.contextmanager
def scratch_nf(cls, tag: str, cfg, **create_kw):
    """One NF instance of `cls` on two veth pairs (`<tag>i`, `<tag>o`) in a throwaway netns;
    inst.ns, inst.pd and inst.idx (ifindex of its "in" and "out" ports) set. Destroyed, with
    the namespace, however the test ends."""
    from nfx.nfs.base import Wiring
    s = Scratch(tag)
    pd = pin_dir(tag)
    inst = None
    try:
        ns = s.ns("n")
        s.veth(f"{tag}i", ns, f"{tag}I", ns)
        s.veth(f"{tag}o", ns, f"{tag}O", ns)
        inst = cls.create(f"{tag}0", Wiring(ns, (f"{tag}i", f"{tag}o"), (PEER_IN, PEER_OUT)), pd, cfg, **create_kw)
        inst.ns, inst.pd = ns, pd
        inst.idx = {"in": netns.ifindex(f"{tag}i", ns), "out": netns.ifindex(f"{tag}o", ns)}
        yield inst
    finally:
        if inst is not None:
            cls.destroy(inst.wiring, pd)
        s.close()
