"""Workloads and their runs, shared by the load generator (`loadgen`, over HTTP) and the simulator (`modm.sim`).

Trace readers, the session model, arrival processes, per-request records and server stats samples, summaries,
comparisons, plots and the run directory: one definition of each, so a measured and a simulated run of one config
see the same requests at the same offsets and are reported alike. numpy, pyarrow, pydantic and matplotlib only: no
torch, no Ray, nothing of the rest of modm.
"""
