"""The cache index tier's capacity plan: CacheIndex reader replicas needed at 16, 100 and 1,000 GPUs at MoDM's rates.

    .venv/bin/python benchmarks/index_capacity.py --index-lookup-ms MS --index-admission-ms MS --index-commit-ms MS \
        [--out benchmarks/results/index_capacity] [other `modm sim index-plan` options]

The service times are a CacheIndex replica's measured ones (benchmarks/cache_readers_bench.py for lookups,
benchmarks/cache_bench.py for admissions). Prints the table and writes index_plan.json. Equivalent to
`modm sim index-plan`.
"""

from __future__ import annotations

import sys

from modm.sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["index-plan", *sys.argv[1:]]))
