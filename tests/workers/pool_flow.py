"""A tiny flow for the Cloud Run GPU pool test: reports what the emulated Cloud Run task gave it."""

import os
import subprocess

from prefect import flow


@flow(name="cloud-run-pool-check", log_prints=True)
def cloud_run_pool_check(message: str = "hello") -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    seen = {
        "message": message,
        "job": os.environ.get("CLOUD_RUN_JOB"),
        "execution": os.environ.get("CLOUD_RUN_EXECUTION"),
        "gpu": smi.stdout.strip(),
    }
    print(f"pool check: {seen}")
    return seen
