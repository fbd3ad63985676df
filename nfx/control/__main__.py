"""python -m nfx.control --testbed NAME [--port P] [--ctrl-delay-ms D] [--ctrl-rate-mbit R]: the controller process."""
import argparse
import logging
import os
import sys

from .controller import serve
from ..procs.controller import log_path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m nfx.control")
    ap.add_argument("--testbed", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ctrl-delay-ms", type=float, default=0.0)
    ap.add_argument("--ctrl-rate-mbit", type=float, default=0.0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        filename=str(log_path(a.testbed)))

    def ready(port):
        # the port on stdout, one line, is how `nfx controller start` learns it
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        os.close(1)
    serve(a.testbed, a.port, a.ctrl_delay_ms, ready, a.ctrl_rate_mbit)


main()
