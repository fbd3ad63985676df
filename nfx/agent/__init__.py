"""The agent beside each NF instance (server.py, run as `python -m nfx.agent`), its client
(client.py), process lifecycle (lifecycle.py), event streams (streams.py); PROTOCOL.md."""
from .protocol import PORT

__all__ = ["PORT", "AgentClient"]


def __getattr__(name):
    if name == "AgentClient":
        from .client import AgentClient
        return AgentClient
    raise AttributeError(name)
