"""Throwaway namespaces and veth pairs for root tests: unique short names, everything created is
registered and removed in teardown, even when the test fails half way."""
import os
import secrets

from nfx.loader import netns


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
