"""`with x:` for the objects that hold kernel or network resources: x.close() at the end."""


class Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ClosedWhenCollected(Closing):
    """Also closed when garbage-collected, for handles a caller may forget (sockets, rings)."""

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
