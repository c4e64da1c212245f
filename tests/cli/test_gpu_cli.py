"""`gpuops gpu-check` and `gpuops gpu-probe` run as the installed command (CONTRACTS §4)."""
import gpuops.data
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuops.emulator.fake_nvidia_smi import emulated_gpu_env, install_fake_nvidia_smi
from gpuops.gpu import parse_smi_csv

GPUOPS = str(Path(sys.executable).with_name("gpuops"))
READINGS = Path(gpuops.data.__file__).parent / "nvidia_smi"
CONTRACT_KEYS = {"verdict", "gpus", "reasons"}
GPU_KEYS = {"name", "memory_total_mib", "compute_cap"}
PROBE_KEYS = {"probe", "smi", "gpus", "torch", "compute", "verdict", "reasons", "emulated"}


def gpuops(*args, env=None, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([GPUOPS, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)


def check_json(*args) -> tuple[int, dict]:
    done = gpuops("gpu-check", "--json", *args)
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("card, args, code", [
    ("t4.csv", ["--min-vram-gib", "15"], 0),
    ("t4_noheader.csv", ["--min-vram-gib", "20"], 1),
    ("l4.csv", [], 0),
    ("l4_extra_columns.csv", ["--min-vram-gib", "20"], 0),
    ("gtx1080_noheader.csv", [], 1),
    ("rtx3060_8gb.csv", ["--min-vram-gib", "10"], 1),
    ("rtx3060_12gb_noheader.csv", ["--min-vram-gib", "10"], 0),
    ("t4.csv", ["--min-compute-cap", "8.0"], 1),
    ("multi_gpu.csv", [], 1),
])
def test_gpu_check_exit_code_and_json_keys(card, args, code):
    returncode, result = check_json("--smi-csv", str(READINGS / card), *args)
    assert returncode == code
    assert CONTRACT_KEYS <= set(result) and result["verdict"] == ("pass" if code == 0 else "fail")
    assert result["gpus"] and all(set(gpu) == GPU_KEYS for gpu in result["gpus"])
    assert all(isinstance(r, str) and "Fix:" in r for r in result["reasons"])
    assert bool(result["reasons"]) == bool(code)


def test_gpu_check_reads_stdin_and_prints_for_people_without_json():
    done = gpuops("gpu-check", "--smi-csv", "-", "--min-vram-gib", "10",
                  stdin=(READINGS / "rtx3060_8gb_noheader.csv").read_text())
    assert done.returncode == 1
    assert "FAIL GPU 0: NVIDIA GeForce RTX 3060, 8192 MiB" in done.stdout and "verdict: fail" in done.stdout


@pytest.mark.parametrize("text, line", [
    ("name, memory.total [MiB], compute_cap\nNVIDIA L4, 23034 MiB\n", "line 2"),
    ("NVIDIA L4, 23034, [N/A]\n", "line 1"),
    ("", "line 1"),
])
def test_unparsable_file_exits_2_naming_the_line(tmp_path, text, line):
    path = tmp_path / "smi.csv"
    path.write_text(text)
    code, result = check_json("--smi-csv", str(path))
    assert code == 2
    assert result["verdict"] == "error" and result["gpus"] == [] and line in result["error"]
    assert result["reasons"] == [result["error"]]
    done = gpuops("gpu-check", "--smi-csv", str(path))
    assert done.returncode == 2 and line in done.stderr and done.stdout == ""


def test_unreadable_file_and_bad_options_exit_2(tmp_path):
    code, result = check_json("--smi-csv", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in result["error"]
    assert gpuops("gpu-check", "--smi-csv", str(READINGS / "l4.csv"), "--min-compute-cap", "seven").returncode == 2
    assert gpuops("gpu-check", "--smi-csv", str(READINGS / "l4.csv"), "--min-vram-gib", "-1").returncode == 2


def probe(env, *args) -> tuple[int, dict]:
    done = gpuops("gpu-probe", *args, env=env)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout + done.stderr  # one JSON line: it is read back from job logs
    report = json.loads(lines[0])
    assert PROBE_KEYS <= set(report)
    return done.returncode, report


def fake_env(tmp_path, card: str) -> dict:
    install_fake_nvidia_smi(tmp_path / "bin", (READINGS / f"{card}_noheader.csv").read_text())
    return emulated_gpu_env(tmp_path / "bin")


def without_emulation_flag(path_dirs) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GPUOPS_EMULATED_GPU"}
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return env


def test_probe_on_an_emulated_l4_passes_and_says_it_is_emulated(tmp_path):
    code, report = probe(fake_env(tmp_path, "l4_extra_columns"), "--model-gib", "7.5", "--second-model-gib", "1.5")
    assert code == 0 and report["verdict"] == "pass" and report["reasons"] == []
    assert report["emulated"] is True
    assert report["gpus"][0]["name"] == "NVIDIA L4" and report["gpus"][0]["driver_version"] == "535.104.05"
    assert report["probe"]["vram_need_gib"] == pytest.approx(10.8)
    assert report["smi"]["path"] == str(tmp_path / "bin" / "nvidia-smi")
    if importlib.util.find_spec("torch") is None:
        assert report["torch"] is None
        assert report["compute"]["device"] == "cpu" and report["compute"]["ok"] is True
    assert report["compute"]["seconds"] >= 0


def test_probe_on_an_emulated_gtx_1080_fails(tmp_path):
    code, report = probe(fake_env(tmp_path, "gtx1080"), "--json")
    assert code == 1 and report["verdict"] == "fail" and report["emulated"] is True
    assert any("6.1" in r and "PyTorch 2.x" in r for r in report["reasons"])


def test_probe_vram_need_from_the_models_tells_the_3060s_apart(tmp_path):
    models = ("--model-gib", "7.5", "--second-model-gib", "1.5")
    assert probe(fake_env(tmp_path / "a", "rtx3060_8gb"), *models)[0] == 1
    assert probe(fake_env(tmp_path / "b", "rtx3060_12gb"), *models)[0] == 0


def test_the_fake_marks_emulation_even_when_the_variable_is_lost(tmp_path):
    install_fake_nvidia_smi(tmp_path, (READINGS / "l4_noheader.csv").read_text())
    assert probe(without_emulation_flag([tmp_path]))[1]["emulated"] is True


def test_a_non_emulated_nvidia_smi_is_not_reported_as_emulated(tmp_path):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA L4, 23034, 8.9, 0, 535.104.05'\n")
    script.chmod(0o755)
    code, report = probe(without_emulation_flag([tmp_path]))
    assert code == 0 and report["emulated"] is False


def test_probe_without_nvidia_smi_exits_2_with_the_reason(tmp_path):
    code, report = probe(without_emulation_flag([tmp_path]))
    assert code == 2 and report["verdict"] == "error" and "not on PATH" in report["error"]
    assert report["reasons"] == [report["error"]] and report["compute"]["ok"] is True


def test_probe_with_a_failing_driver_exits_2(tmp_path):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA"
                      " driver.\"\nexit 9\n")
    script.chmod(0o755)
    code, report = probe(without_emulation_flag([tmp_path]))
    assert code == 2 and "exited 9" in report["error"] and "NVIDIA-SMI has failed" in report["error"]


def test_probe_with_unparsable_output_exits_2_naming_the_line(tmp_path):
    install_fake_nvidia_smi(tmp_path, "NVIDIA L4, 23034, [N/A]\n")
    code, report = probe(emulated_gpu_env(tmp_path))
    assert code == 2 and "unparsable" in report["error"] and "line 1" in report["error"]
    assert report["emulated"] is True


@pytest.mark.parametrize("fmt", ["csv", "csv,noheader,nounits", "csv,nounits"])
def test_the_fake_answers_both_csv_forms_as_the_recording_says(tmp_path, fmt):
    smi = install_fake_nvidia_smi(tmp_path, (READINGS / "multi_gpu_noheader.csv").read_text())
    done = subprocess.run([str(smi), "--query-gpu=name,memory.total,compute_cap", f"--format={fmt}"],
                          capture_output=True, text=True, check=True)
    assert parse_smi_csv(done.stdout) == parse_smi_csv((READINGS / "multi_gpu_noheader.csv").read_text())
    assert ("81920 MiB" in done.stdout) == (fmt == "csv")  # units on values unless nounits
    assert done.stdout.startswith("name, memory.total [MiB]") == ("noheader" not in fmt)
