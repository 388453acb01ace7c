"""Trace files shipped with the load generator's tests (a module of its own: `from conftest import ...` takes
whichever conftest was imported first)."""

from pathlib import Path

# The first 1,000 rows of DiffusionDB (prompt, ir_id, part), shipped so that the tests need nothing outside the repo.
DIFFUSIONDB_SAMPLE = Path(__file__).parent / "data" / "diffusiondb_prompts_1k.tsv"
