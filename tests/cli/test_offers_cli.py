"""`gpuops offers rank` and `gpuops offers check-image`: one JSON object, exit 0 chosen / 1 none / 2 bad input."""
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from gpuops.host_rules import country_of, offer_reliability
from gpuops_cli import cli
from tests.adapters.test_registry import registry, registry_emulator  # noqa: F401  fixtures

SAMPLE = str(resources.files("gpuops.data").joinpath("vast_offers_sample.json"))
WIRE = "from gpuops_cli import cli\n"


@pytest.fixture
def gpuops(monkeypatch, capsys):
    def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
        code = cli.main(list(args))
        return code, capsys.readouterr().out

    return run


def rank_json(gpuops, *args: str) -> tuple[int, dict]:
    code, out = gpuops("offers", "rank", "--file", SAMPLE, "--json", *args)
    return code, json.loads(out)


def test_rank_chooses_the_12gb_rtx_3060s_and_says_why_the_others_lost(gpuops):
    code, result = rank_json(gpuops, "--gpu-name", "RTX 3060", "--need-vram-gib", "12")
    assert code == 0
    assert [o["id"] for o in result["chosen"]] == [20981743, 21034117]
    assert all({"id", "score", "reasons", "gpu_name", "dph_total"} <= set(o) for o in result["chosen"])
    rejected = {r["id"]: r for r in result["rejected"]}
    assert rejected[21034205]["verdicts"][0]["rule"] == "vram"          # 8 GB
    assert rejected[21099871]["verdicts"][-1]["rule"] == "region"       # Shanghai
    assert result["offers"] == 31 and result["chosen_count"] + result["rejected_count"] == 31


@pytest.mark.parametrize("args", [[], ["--need-vram-gib", "12"], ["--max-dph", "0.3"], ["--gpu-name", "RTX 4090"]])
def test_cn_hosts_unreliable_hosts_and_lookalike_names_are_never_chosen(gpuops, args):
    _, result = rank_json(gpuops, "--limit", "0", *args)
    for offer in result["chosen"]:
        assert country_of(offer["geolocation"]) != "CN" and offer_reliability(offer) > 0.99
    _, exact = rank_json(gpuops, "--gpu-name", "RTX 5090")
    assert {o["gpu_name"] for o in exact["chosen"]} == {"RTX 5090"}


def test_nothing_passing_exits_1_with_every_reason(gpuops):
    code, result = rank_json(gpuops, "--gpu-name", "GTX 1080")
    assert code == 1 and result["chosen"] == []
    [gtx] = [r for r in result["rejected"] if r["gpu_name"] == "GTX 1080"]
    assert "sm_61" in gtx["reasons"][0] and "Fix:" in gtx["reasons"][0]


def test_limit_shows_the_best_n_and_counts_them_all(gpuops):
    _, result = rank_json(gpuops, "--limit", "2")
    assert len(result["chosen"]) == 2 and result["chosen_count"] > 2


def test_flags_override_the_filter_file(gpuops, tmp_path):
    flt = tmp_path / "filter.json"
    flt.write_text(json.dumps({"gpu_name": "RTX 4090", "need_vram_gib": 12, "blocked_countries": ["CN"]}))
    _, from_file = rank_json(gpuops, "--filter", str(flt))
    assert {o["gpu_name"] for o in from_file["chosen"]} == {"RTX 4090"}
    _, overridden = rank_json(gpuops, "--filter", str(flt), "--gpu-name", "RTX 5090 D", "--country-blocklist", "CN,HK")
    assert overridden["chosen"] == [] and overridden["filter"]["blocked_countries"] == ["CN", "HK"]
    assert overridden["filter"]["need_vram_gib"] == 12


def test_offers_from_stdin_in_the_apis_shape(gpuops):
    offers = json.loads(Path(SAMPLE).read_text())
    code, out = gpuops("offers", "rank", "--file", "-", "--json", "--gpu-name", "Tesla T4", "--need-vram-gib", "12",
                       stdin=json.dumps({"offers": offers}))
    assert code == 0 and {o["id"] for o in json.loads(out)["chosen"]} == {20766101, 20766277}


def test_a_table_for_people(gpuops):
    code, out = gpuops("offers", "rank", "--file", SAMPLE, "--gpu-name", "RTX 3060", "--need-vram-gib", "12",
                       "--rejected")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["#", "id", "gpu"]
    assert lines[1].split()[:3] == ["1", "20981743", "RTX"] and "Bavaria, DE" in lines[1]
    assert "chosen 2 of 31 offers" in out and "8 GB and 12 GB" in out and "Great Firewall" in out


@pytest.mark.parametrize("args, says", [
    (["--gpu-name", "RTX5090"], "gpu_name (--gpu-name)"),
    (["--min-reliability", "0.9"], "min_reliability (--min-reliability) 0.9"),
    (["--need-vram-gib", "twelve"], "--need-vram-gib: invalid float value"),
    (["--country-blocklist", "China"], "blocked_countries (--country-blocklist)"),
    (["--limit", "-1"], "limit (--limit) -1"),
    (["--min-reliability", "1.5"], "1.5: out of range; give a fraction from 0 to 1."),
    (["--need-vram-gib", "nan"], "nan: not a finite number; give a size in GiB (1 GiB = 1024 MiB)."),
    (["--max-dph", "inf"], "max_dph (--max-dph) inf: not a finite number"),
    (["--gpu", "RTX 3060"], "unrecognized arguments: --gpu"),  # no prefix abbreviation of --gpu-name
    (["--allow-blocked-country", "DE"], "DE not blocked by default"),
])
def test_bad_flags_exit_2_naming_the_flag(gpuops, args, says):
    code, out = gpuops("offers", "rank", "--file", SAMPLE, "--json", *args)
    result = json.loads(out)
    assert code == 2 and result["error"] == "bad-input" and says in result["message"]


@pytest.mark.parametrize("offers, filter_text, says", [
    (None, None, "cannot read it"),
    ("[1, 2", None, "not JSON"),
    ('{"results": []}', None, "expected a JSON list of offers"),
    ("[]", "{not json", "filter (--filter)"),
    ("[]", '["RTX 3060"]', "expected a JSON object of filter fields"),
    ("[]", '{"gpu": "RTX 3060"}', "unknown field(s) 'gpu'"),
])
def test_bad_files_exit_2_naming_the_file(gpuops, tmp_path, offers, filter_text, says):
    offers_path = tmp_path / "offers.json"
    if offers is not None:
        offers_path.write_text(offers)
    args = ["offers", "rank", "--file", str(offers_path), "--json"]
    if filter_text is not None:
        (tmp_path / "filter.json").write_text(filter_text)
        args += ["--filter", str(tmp_path / "filter.json")]
    code, out = gpuops(*args)
    assert code == 2 and says in json.loads(out)["message"]


def test_the_command_prints_one_json_object_and_nothing_else(tmp_path):
    program = WIRE + f"import sys\nsys.exit(cli.main(['offers', 'rank', '--file', {SAMPLE!r}, '--json']))\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chosen"] and done.stderr == ""


# ---------------------------------------------------------------- check-image, against the registry stand-in


def check_image(gpuops, *args) -> tuple[int, dict]:
    code, out = gpuops("offers", "check-image", *args, "--json")
    return code, json.loads(out)


def test_the_runtime_image_passes(gpuops, registry):
    code, result = check_image(gpuops, "nvidia/cuda:12.4.1-runtime-ubuntu22.04")
    assert code == 0 and result["verdict"] == "pass" and result["reasons"] == []
    assert round(result["size"]["total_bytes"] / 1e9, 2) == 4.04 and result["source"]["pulls"] == 100_000_000


def test_an_image_under_1_gb_is_shown_in_mb(gpuops, registry):
    from tests.adapters.test_registry import SeedImage

    registry.add_image(SeedImage("acme/tiny", "v1", {"linux/amd64": [10_000_000, 20_000_000]}, config_size=5,
                                 index=False))
    code, out = gpuops("offers", "check-image", "acme/tiny:v1")
    assert out.startswith("docker.io/acme/tiny:v1: 30 MB for linux/amd64") and "0.0 GB" not in out


def test_the_devel_image_warns_with_the_runtime_tag_as_the_fix(gpuops, registry):
    code, result = check_image(gpuops, "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04")
    assert code == 0 and result["verdict"] == "warn"
    rules = {v["rule"]: v for v in result["verdicts"]}
    assert rules["image-size"]["warn"] and "12.4.1-cudnn-runtime-ubuntu22.04" in rules["image-devel"]["fix"]
    _, training = check_image(gpuops, "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04", "--training")
    assert not {v["rule"]: v for v in training["verdicts"]}["image-devel"]["warn"]


def test_the_runbooks_173gb_image_from_an_unknown_publisher_is_refused(gpuops, registry):
    code, result = check_image(gpuops, "valyriantech/ace-step-1.5")
    assert code == 1 and result["verdict"] == "fail"
    failed = {v["rule"] for v in result["verdicts"] if not v["ok"]}
    assert failed == {"image-size", "trust"}
    assert any("173.0 GB" in r for r in result["reasons"]) and any("pulls 404" in r for r in result["reasons"])


def test_a_bad_image_reference_exits_2(gpuops, registry):
    code, result = check_image(gpuops, "Not An Image")
    assert code == 2 and "image reference" in result["message"]


def test_rank_imports_neither_prefect_nor_an_http_client():
    from tests.unit.test_import_boundaries import imported_after

    rank = f"cli.main(['offers', 'rank', '--file', {SAMPLE!r}])"
    statements = WIRE + f"import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    {rank}"
    assert imported_after(statements, ("prefect", "flows", "google.cloud", "httpx", "vastai", "boto3")) == []
