"""`gpuops emulate SYSTEM` runs each stand-in alone on 127.0.0.1 and says it is one, with the variables to use it."""
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("system, variable, path", [
    ("vast-api", "GPUOPS_VAST_API", "/api/v0/instances/"),
    ("registry", "GPUOPS_REGISTRY_URL", "/v2/"),
])
def test_a_stand_in_runs_alone_and_labels_itself(system, variable, path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpuops_cli.cli", "emulate", system, "--port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert "not" in banner.splitlines()[0], banner  # "... stand-in — not vast.ai" / "— not Docker Hub"
        url = re.search(rf"{variable}=(http://127\.0\.0\.1:\d+)", banner).group(1)
        try:
            urllib.request.urlopen(url + path, timeout=10).close()
        except urllib.error.HTTPError as answered:  # any HTTP answer: it serves (the key is asked for)
            assert answered.code in (401, 403)
    finally:
        proc.terminate()
        proc.wait(10)
