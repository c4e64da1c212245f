"""Entry points: the `gpuops` command, `make demo` and the sample workload's container entrypoint (top layer)."""
