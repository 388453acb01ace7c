"""Simulator cost at cluster scale: 10k requests on 16 GPUs and 1M requests on 1000 GPUs (parametric hits).

    .venv/bin/python benchmarks/sim_scale.py [--out runs/sim_scale] [extra `modm sim scale` options]

Prints the wall time and events/s of each run and writes scale.json. Equivalent to `modm sim scale`.
"""

from __future__ import annotations

import sys

from modm.sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["scale", "--systems", "modm", "vanilla", "nirvana", *sys.argv[1:]]))
