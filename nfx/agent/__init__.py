"""The agent beside each NF instance (server.py and its parts, run as `python -m nfx.agent`), its
client (client.py), process lifecycle (lifecycle.py), event streams (streams.py); PROTOCOL.md."""
from .client import AgentClient
from .protocol import PORT

__all__ = ["PORT", "AgentClient"]
