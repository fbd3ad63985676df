"""Process managers: start, find and stop a testbed's agents (agents.py) and controller (controller.py)."""
