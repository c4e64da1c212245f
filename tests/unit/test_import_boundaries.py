"""What a command imports before it needs it: held without timing, in fresh interpreters."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_after(statements: str, watched: tuple[str, ...]) -> list[str]:
    """The watched modules (and their submodules) present in sys.modules after `statements`."""
    probe = (f"{statements}\nimport sys, json\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({watched!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cloud_run_blocks_do_not_import_prefect_gcp():
    # prefect_gcp's package imports BigQuery, Storage, Secret Manager and Vertex AI (1.5 s); it is
    # needed only when a target holds credentials or is registered.
    assert imported_after("import blocks.cloud_run_blocks", ("prefect_gcp",)) == []


def test_describe_flow_imports_neither_prefect_gcp_nor_run_v2_until_it_runs():
    # google.cloud.run_v2 is imported where a client is built.
    assert imported_after("import flows.describe_revision", ("prefect_gcp", "google.cloud.run_v2")) == []


def test_cli_parser_imports_no_flow_no_prefect_and_no_cloud_client():
    watched = ("prefect", "flows", "google.cloud", "blocks")
    assert imported_after("from gpuops_cli.cli import build_parser\nbuild_parser()", watched) == []


def test_gpu_check_runs_without_prefect_or_flows():
    reading = ROOT / "gpuops" / "data" / "nvidia_smi" / "l4.csv"
    statements = ("import contextlib, io\nfrom gpuops_cli.cli import main\n"
                  f"with contextlib.redirect_stdout(io.StringIO()):\n    main(['gpu-check', '--smi-csv', {str(reading)!r}, '--json'])")
    assert imported_after(statements, ("prefect", "flows", "google.cloud")) == []
