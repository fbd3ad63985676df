"""Ports a running switch gains and loses (nfx nf add|remove): the pinned program on the port's
ingress, the pinned XDP stub (a veth end that native XDP redirects arrive at needs a program on
it) and the port's role. The role table (sw_ports) is written by nfx/control/switch.py only;
this module says in what order, and refuses a port the table has no room for."""
from .. import layout as L
from ..errors import BadInput, NotFound
from ..loader import attach
from .switch import Switch


def roles_free(sw: Switch) -> int:
    """Ports that may still get a role: sw_ports holds NFX_SW_PORT_SLOTS (hosts, NF instances
    and trunks alike)."""
    return L.SW_PORT_SLOTS - sw.maps.sw_ports.export()[0]


def check_room(sw: Switch, ports: int = 1) -> None:
    if roles_free(sw) < ports:
        raise BadInput(f"switch {sw.name}: all {L.SW_PORT_SLOTS} port slots (sw_ports) are in use",
                       hint="remove an instance first (nfx nf remove)")


def add_port(sw: Switch, port: str, role: str, stub_pin: str | None = None) -> None:
    """Attach and give `port` its role; on failure nothing stays attached or recorded."""
    if role not in Switch.ROLES:
        raise BadInput(f"unknown port role {role!r}: one of {', '.join(Switch.ROLES)}")
    check_room(sw)
    try:
        sw.attach_pinned(port)
        if stub_pin:
            attach.attach_xdp_pinned(sw.ns, port, stub_pin)
        sw.set_port_role(port, role)
    except BaseException:
        drop_port(sw, port)
        raise


def drop_port(sw: Switch, port: str, detach: bool = True) -> None:
    """Undo add_port before the interface goes: the role forgotten while its ifindex still names
    the port (a later interface could get the number), then the filter and the stub detached;
    `detach` False leaves them to the interface's deletion, which takes them along (detaching
    waits out RCU grace periods: about 70 ms a port here). A port not there (any more) is fine."""
    try:
        idx = sw.ifindex(port)
    except NotFound:
        return
    sw.forget_port(idx)
    if detach:
        attach.detach_tc(sw.ns, port)
        attach.detach_xdp(sw.ns, port, "native")
