"""Prefect worker types gpuops adds on top of the integrations' own (prefect-gcp)."""
