"""The live inspector behind `nfx inspect`: watcher threads (one subscription per instance,
watch.py), the view model their events feed (model.py, flow matching and per-flow rows in
flows.py), and the rich screen (view.py)."""
