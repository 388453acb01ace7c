"""MoDM's experiments in the simulator on the shared DiffusionDB prompts (session model, MiniLM retrieval).

    .venv/bin/python benchmarks/sim_reproduce.py --trace ../shared/data/diffusiondb_prompts_10k.tsv \\
        --embeddings runs/sim/emb.npz --out runs/sim/reproduce [throughput slo ramp]

Prints the throughput, SLO-vs-rate and increasing-load tables next to the paper's numbers and writes
reproduce.json plus loadgen-style run directories and plots. The first run embeds the ~10k workload prompts with
MiniLM on CPU (about 15 s on an idle core) and caches them in --embeddings.
"""

from __future__ import annotations

import sys

from modm.sim.cli import main

DEFAULTS = [
    "--sessions",
    "-n",
    "9000",
    "--warm-up",
    "1000",
    "--slo-requests",
    "1000",
    "--ramp-requests",
    "3000",
    "--slo-throughput-mode",
]

if __name__ == "__main__":
    sys.exit(main(["reproduce", *DEFAULTS, *sys.argv[1:]]))
