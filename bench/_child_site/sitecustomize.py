"""Imported by Python at start-up in processes the benchmark's tuneforge arm starts (PYTHONPATH).

It counts their training the way the arm counts its own (see `_measure.meter_child_processes`).
"""

import os
import sys

# training processes only: launched ones, or the `tuneforge train` command itself where it trains
# in its own process (METER_THIS, not inherited); not multiprocessing's resource tracker, nor
# anything else started
_this = os.environ.pop("TUNEFORGE_BENCH_METER_THIS", None)
if os.environ.get("TUNEFORGE_BENCH_METER_DIR") and ("--multiprocessing-fork" in sys.argv or _this):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from _measure import instrument_rank

    instrument_rank()
