"""The orchestration loop (issue 15): a policy (policy.py), a monitor sampling every NF instance
through its agent's stats stream (monitor.py) and an analyser raising overload, underload and
imbalance with hysteresis (analyse.py). Sits between control and cli: it may import agent,
migrate and control; nothing below imports it."""
