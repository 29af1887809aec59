"""Run the daemon (``start --foreground``) under cProfile; write the stats on exit.

    python benchmarks/_profiled_daemon.py OUT.prof

Used by bench_ingest.py to name where the daemon's time goes. The daemon stops
cleanly on SIGTERM, so the profile is written.
"""

import cProfile
import sys

from contextuate_trio.cli.main import main

if __name__ == "__main__":
    out = sys.argv[1]
    prof = cProfile.Profile()
    prof.enable()
    try:
        main(["start", "--foreground"])
    finally:
        prof.disable()
        prof.dump_stats(out)
