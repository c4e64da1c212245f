"""Offer ranking over vast.ai-shaped offers: the runbook's traps are never chosen, bad input is named."""
import copy
import json
import time
from importlib import resources

import pytest

from gpuops.errors import BadInput
from gpuops.host_rules import country_of, offer_reliability
from gpuops.offers import OfferFilter, judge_offer, offer_vram_mib, parse_filter, rank, vast_query

SAMPLE = json.loads(resources.files("gpuops.data").joinpath("vast_offers_sample.json").read_text())
BY_ID = {o["id"]: o for o in SAMPLE}


def chosen_ids(filter_data: dict, offers=None) -> list:
    return [o["id"] for o in rank(offers if offers is not None else SAMPLE, parse_filter(filter_data)).chosen]


def rejected_rules(ranking, offer_id) -> set[str]:
    [entry] = [r for r in ranking.rejected if r["id"] == offer_id]
    return {v["rule"] for v in entry["verdicts"]}


# ---------------------------------------------------------------- the sample holds the runbook's traps


def test_the_sample_is_shaped_like_vast_ai_raw_results_and_holds_the_traps():
    fields = {"id", "ask_contract_id", "machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram", "compute_cap",
              "reliability", "reliability2", "geolocation", "inet_down", "inet_up", "dph_total", "verification",
              "hosting_type", "disk_space", "cuda_max_good"}
    assert 25 <= len(SAMPLE) <= 40 and len(BY_ID) == len(SAMPLE)
    assert all(fields - {"compute_cap"} <= set(o) for o in SAMPLE)
    names = {o["gpu_name"] for o in SAMPLE}
    assert {"GTX 1080", "RTX 3060", "RTX 5090", "RTX 5090 D", "RTX PRO 6000 WS", "Tesla T4"} <= names
    assert {o["gpu_ram"] for o in SAMPLE if o["gpu_name"] == "RTX 3060"} >= {8192, 12288}
    assert any(country_of(o["geolocation"]) == "CN" for o in SAMPLE)
    assert any(offer_reliability(o) == 0.98 for o in SAMPLE)
    assert any(o["verification"] != "verified" and o["dph_total"] < 0.1 for o in SAMPLE)


@pytest.mark.parametrize("filter_data", [
    {}, {"need_vram_gib": 12}, {"gpu_name": "RTX 4090"}, {"gpu_name": "RTX 3060"}, {"max_dph": 0.3},
    {"verified_only": False, "prefer_verified": False, "prefer_datacenter": False},
])
def test_a_cn_host_a_098_host_and_an_old_card_are_never_chosen(filter_data):
    for offer in rank(SAMPLE, parse_filter(filter_data)).chosen:
        assert country_of(offer["geolocation"]) != "CN"
        assert offer_reliability(offer) > 0.99
        assert offer["gpu_name"] not in ("GTX 1080", "GTX 1080 Ti", "Titan Xp")


@pytest.mark.parametrize("blocklist", ["DE", "", [], ["DE", "RU"], "us"])
def test_an_operator_blocklist_adds_to_the_default_cn_block_never_replaces_it(blocklist):
    ranking = rank(SAMPLE, parse_filter({"blocked_countries": blocklist, "gpu_name": "RTX 3060"}))
    assert 21099871 not in [o["id"] for o in ranking.chosen] and "region" in rejected_rules(ranking, 21099871)
    assert "CN" in ranking.filter.blocked_countries and ranking.as_dict()["warnings"] == []
    assert "CN" in vast_query(ranking.filter)["geolocation"]["notin"]
    assert "CN" in OfferFilter(blocked_countries=()).blocked_countries


def test_lifting_the_default_cn_block_is_explicit_and_warned():
    ranking = rank(SAMPLE, parse_filter({"gpu_name": "RTX 3060", "allow_default_blocked_countries": "cn",
                                         "blocked_countries": "DE"}))
    assert ranking.filter.blocked_countries == ("DE",) and 21099871 in [o["id"] for o in ranking.chosen]
    [warning] = ranking.as_dict()["warnings"]
    assert "CN" in warning and "--allow-blocked-country" in warning
    from gpuops.vast_plan import ranking_markdown

    assert f"**Warning:** {warning}" in ranking_markdown(ranking, "here")


@pytest.mark.parametrize("wanted, lookalikes", [
    ("RTX 5090", {"RTX 5090 D", "RTX PRO 6000 WS"}),
    ("RTX 3060", {"RTX 3060 Ti"}),
    ("RTX 4090", {"RTX 4090D"}),
])
def test_a_similar_gpu_name_is_never_chosen(wanted, lookalikes):
    offers = SAMPLE + [dict(BY_ID[21302355], id=99_000 + i, gpu_name=name) for i, name in enumerate(lookalikes)]
    ranking = rank(offers, parse_filter({"gpu_name": wanted}))
    assert ranking.chosen and {o["gpu_name"] for o in ranking.chosen} == {wanted}
    for entry in ranking.rejected:
        if entry["gpu_name"] in lookalikes:
            assert "gpu-name" in {v["rule"] for v in entry["verdicts"]}


def test_rtx_5090_is_not_matched_by_its_lookalikes_even_when_cheaper():
    ranking = rank(SAMPLE, parse_filter({"gpu_name": "RTX 5090"}))
    assert [o["id"] for o in ranking.chosen] == [21302355, 21302291]
    assert rejected_rules(ranking, 21308870) == {"gpu-name"}  # RTX 5090 D, $0.43/h
    assert rejected_rules(ranking, 21311902) == {"gpu-name"}  # RTX PRO 6000 WS


def test_the_8gb_rtx_3060_is_refused_for_a_12gb_need_and_the_12gb_ones_chosen():
    ranking = rank(SAMPLE, parse_filter({"gpu_name": "RTX 3060", "need_vram_gib": 12}))
    assert [o["id"] for o in ranking.chosen] == [20981743, 21034117]  # DE data center first, then Ohio
    assert rejected_rules(ranking, 21034205) == {"vram"}
    assert rejected_rules(ranking, 21099871) == {"region"}   # the cheapest 3060, in Shanghai
    assert rejected_rules(ranking, 21102266) == {"num-gpus"}
    [eight] = [r for r in ranking.rejected if r["id"] == 21034205]
    assert "8 GB and 12 GB" in eight["reasons"][0] and "Fix:" in eight["reasons"][0]
    # The name says nothing of the VRAM: a chosen 3060 carries the reminder to read nvidia-smi after renting.
    assert any("nvidia-smi" in reason for reason in ranking.chosen[0]["reasons"])


def test_t4_is_chosen_for_a_12gb_need_even_when_the_host_reports_no_compute_cap():
    assert "compute_cap" not in BY_ID[20766277]
    assert set(chosen_ids({"gpu_name": "Tesla T4", "need_vram_gib": 12})) == {20766101, 20766277}


def test_a_host_reporting_a_higher_capability_than_its_card_has_is_refused():
    ranking = rank(SAMPLE, parse_filter({}))
    assert BY_ID[20450981]["compute_cap"] == 860  # a GTX 1080 Ti (6.1) claiming 8.6
    assert rejected_rules(ranking, 20450981) == {"compute-capability"}
    [entry] = [r for r in ranking.rejected if r["id"] == 20450981]
    assert entry["verdicts"][0]["value"] == "6.1"


def test_the_cheap_unverified_host_is_left_out_by_default_and_ranked_below_when_allowed():
    assert 21320004 not in chosen_ids({"gpu_name": "RTX 3090"})
    allowed = chosen_ids({"gpu_name": "RTX 3090", "verified_only": False})
    assert allowed == [21055519, 21320004]  # verified $0.19/h above unverified $0.08/h


def test_every_rejection_names_every_failed_rule_with_its_fix():
    ranking = rank(SAMPLE, parse_filter({"gpu_name": "RTX 3060", "need_vram_gib": 12}))
    gtx = [r for r in ranking.rejected if r["id"] == 19877012][0]
    assert {v["rule"] for v in gtx["verdicts"]} == {"gpu-name", "compute-capability", "vram"}
    for entry in ranking.rejected:
        assert entry["reasons"] and all("Fix:" in reason for reason in entry["reasons"])
        assert all(v["fix"] and v["message"] for v in entry["verdicts"])
    assert len(ranking.chosen) + len(ranking.rejected) == len(SAMPLE)


# ---------------------------------------------------------------- ranking order and scores


def test_chosen_offers_are_the_original_dicts_plus_a_score_and_its_reasons():
    ranking = rank(SAMPLE, parse_filter({"need_vram_gib": 12}))
    scores = [o["score"] for o in ranking.chosen]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)
    best = ranking.chosen[0]
    original = BY_ID[best["id"]]
    assert {k: v for k, v in best.items() if k not in ("score", "reasons", "vast_score")} == \
        {k: v for k, v in original.items() if k != "score"}
    assert best["vast_score"] == original["score"] and best["score"] != original["score"]
    assert [r.split()[0].rstrip(":") for r in best["reasons"][:5]] == ["price", "reliability", "verified", "data",
                                                                         "download"]


def test_ties_go_to_the_cheaper_offer():
    twin = dict(BY_ID[21034117], id=1, dph_total=0.05)
    same = dict(twin, id=2, dph_total=0.05)
    pricier = dict(twin, id=3, dph_total=0.06)
    assert [o["id"] for o in rank([pricier, same, twin], OfferFilter()).chosen] == [1, 2, 3]


def test_preferences_change_the_scores_not_the_verdicts():
    preferred = {o["id"]: o["score"] for o in rank(SAMPLE, parse_filter({"need_vram_gib": 12})).chosen}
    plain = {o["id"]: o["score"] for o in rank(SAMPLE, parse_filter({"need_vram_gib": 12,
                                                                      "prefer_datacenter": False})).chosen}
    assert set(plain) == set(preferred)
    for offer_id, score in preferred.items():
        assert score - plain[offer_id] == pytest.approx(10 if BY_ID[offer_id]["hosting_type"] == 1 else 0)


def test_limits_price_bandwidth_band_and_countries():
    assert all(BY_ID[i]["dph_total"] <= 0.12 for i in chosen_ids({"max_dph": 0.12}))
    assert all(BY_ID[i]["inet_down"] >= 2000 for i in chosen_ids({"min_inet_down_mbps": 2000}))
    band = chosen_ids({"need_vram_gib": 20, "max_vram_gib": 33})
    assert band and all(20 * 1024 <= BY_ID[i]["gpu_ram"] <= 33 * 1024 for i in band)
    allowed = chosen_ids({"allowed_countries": ["US", "CA"]})
    assert allowed and {country_of(BY_ID[i]["geolocation"]) for i in allowed} <= {"US", "CA"}
    assert 21308870 not in chosen_ids({"blocked_countries": ["CN", "HK"]})
    assert 21308870 in chosen_ids({})


# ---------------------------------------------------------------- bad records never crash the ranking


@pytest.mark.parametrize("damage, says", [
    (lambda o: o.pop("gpu_ram"), "lacks gpu_ram"),
    (lambda o: o.update(gpu_ram="24 GB"), "gpu_ram '24 GB'"),
    (lambda o: o.update(gpu_name=None), "lacks gpu_name"),
    (lambda o: o.update(gpu_name=4090), "is not a name"),
    (lambda o: o.update(compute_cap="sm_89"), "sm_89"),
    (lambda o: o.update(reliability="high"), "reliability"),
    (lambda o: o.update(dph_total="cheap"), "dph_total 'cheap' not a number"),
    (lambda o: o.clear(), "lacks id"),
])
def test_a_bad_record_is_rejected_with_its_reason(damage, says):
    bad = copy.deepcopy(BY_ID[21034117])
    damage(bad)
    ranking = rank([bad, BY_ID[20981743]], parse_filter({}))
    assert [o["id"] for o in ranking.chosen] == [20981743]
    [entry] = ranking.rejected
    assert entry["verdicts"][0]["rule"] == "offer-record" and says in entry["reasons"][0]


def test_optional_fields_may_be_missing_or_null():
    sparse = {k: BY_ID[21034117][k] for k in ("id", "gpu_name", "num_gpus", "gpu_ram", "dph_total", "geolocation",
                                               "reliability2", "verification")}
    [chosen] = rank([dict(sparse, inet_down=None)], parse_filter({})).chosen
    assert "download 0 Mbps: 0.0/10" in chosen["reasons"]


def test_records_that_are_not_objects_are_rejected_too():
    ranking = rank(["21034117", None, BY_ID[20981743]], parse_filter({}))
    assert len(ranking.chosen) == 1 and len(ranking.rejected) == 2
    assert all(r["id"] is None and "JSON object" in r["reasons"][0] for r in ranking.rejected)


def test_ten_thousand_offers_rank_well_under_a_second():
    offers = [dict(SAMPLE[i % len(SAMPLE)], id=i) for i in range(10_000)]
    flt = parse_filter({"need_vram_gib": 12})
    started = time.perf_counter()
    ranking = rank(offers, flt)
    elapsed = time.perf_counter() - started
    assert len(ranking.chosen) + len(ranking.rejected) == 10_000
    assert elapsed < 1.0, f"{elapsed:.2f} s"


# ---------------------------------------------------------------- the filter from a dict


def test_defaults_are_the_guardrails():
    flt = parse_filter({})
    assert (flt.num_gpus, flt.min_compute_cap, flt.min_reliability, flt.blocked_countries, flt.verified_only) == (
        1, "7.0", 0.99, ("CN",), True)
    assert flt.need_vram_gib is None


def test_a_whole_filter_parses():
    flt = parse_filter({"gpu_name": ["RTX 3060", "rtx_4090"], "num_gpus": 1, "need_vram_gib": 12, "max_vram_gib": 48,
                        "min_compute_cap": "8.6", "min_reliability": 0.995, "blocked_countries": "cn,ru",
                        "allowed_countries": ["US", "DE"], "min_inet_down_mbps": 200, "max_dph": 0.5,
                        "verified_only": False, "prefer_verified": True, "prefer_datacenter": False})
    assert flt.gpu_names == ("RTX 3060", "rtx 4090") and flt.blocked_countries == ("CN", "RU")
    assert flt.as_dict()["gpu_name"] == ["RTX 3060", "rtx 4090"] and flt.as_dict()["blocked_countries"] == ["CN", "RU"]
    assert parse_filter(flt.as_dict()) == flt


def test_the_need_comes_from_the_model_sizes_as_gpu_py_computes_it():
    assert parse_filter({"model_gib": 7.5, "second_model_gib": 1.5}).need_vram_gib == pytest.approx(10.8)
    with pytest.raises(BadInput, match="model_gib 7.5 and need_vram_gib .--need-vram-gib. 12 are both given"):
        parse_filter({"model_gib": 7.5, "need_vram_gib": 12})


@pytest.mark.parametrize("data, field", [
    ({"gpu": "RTX 3060"}, "unknown field(s) 'gpu'"),
    ({"gpu_name": "RTX5090"}, "gpu_name (--gpu-name) 'RTX5090'"),
    ({"gpu_name": "RTX 50"}, "never by part"),
    ({"gpu_name": []}, "gpu_name (--gpu-name) []"),
    ({"num_gpus": 0}, "num_gpus 0"),
    ({"num_gpus": True}, "num_gpus True"),
    ({"need_vram_gib": "12GB"}, "need_vram_gib (--need-vram-gib) '12GB'"),
    ({"need_vram_gib": -1}, "need_vram_gib (--need-vram-gib) -1"),
    ({"min_compute_cap": "6.1"}, "PyTorch 2.x's minimum"),
    ({"min_compute_cap": "seven"}, "min_compute_cap 'seven'"),
    ({"min_reliability": 0.98}, "min_reliability (--min-reliability) 0.98"),
    ({"min_reliability": 1.5}, "min_reliability (--min-reliability) 1.5"),
    ({"blocked_countries": ["China"]}, "CHINA not two-letter"),
    ({"max_dph": "cheap"}, "max_dph (--max-dph) 'cheap'"),
    ({"verified_only": "yes"}, "verified_only 'yes'"),
    ({"need_vram_gib": 24, "max_vram_gib": 12}, "max_vram_gib 12 is below need_vram_gib 24"),
    ({"allowed_countries": ["CN", "US"]}, "CN, blocked by default"),
    ({"blocked_countries": ["CN"], "allowed_countries": ["CN"]}, "both name CN"),
    ({"allow_default_blocked_countries": ["DE"]}, "DE not blocked by default"),
    ({"second_model_gib": 1.5}, "without model_gib"),
    ({"model_gib": "big"}, "model_gib 'big'"),
])
def test_bad_filter_fields_are_named_with_their_fix(data, field):
    with pytest.raises(BadInput) as raised:
        parse_filter(data)
    assert field in str(raised.value)


def test_every_bad_field_is_named_at_once():
    with pytest.raises(BadInput) as raised:
        parse_filter({"num_gpus": 0, "max_dph": -1, "colour": "red"})
    assert all(part in str(raised.value) for part in ("num_gpus 0", "max_dph (--max-dph) -1", "'colour'"))


def test_a_filter_must_be_an_object():
    with pytest.raises(BadInput, match="JSON object"):
        parse_filter(["RTX 3060"])


# ---------------------------------------------------------------- helpers the flow uses


def test_offer_vram_is_gpu_ram_per_gpu_in_mib():
    assert offer_vram_mib(BY_ID[21150433]) == 24564
    assert offer_vram_mib(BY_ID[21188140]) == 81559  # 8 x H100: per GPU
    with pytest.raises(ValueError, match="gpu_ram"):
        offer_vram_mib({"id": 1})


def test_judge_offer_returns_only_failures():
    assert judge_offer(BY_ID[20981743], OfferFilter()) == []
    assert [v.rule for v in judge_offer(BY_ID[20877310], OfferFilter())] == ["reliability"]


def test_the_same_filter_as_a_vast_ai_query():
    query = vast_query(parse_filter({"gpu_name": "RTX 3060", "need_vram_gib": 12, "max_dph": 0.15,
                                     "min_inet_down_mbps": 100}))
    assert query == {"gpu_name": {"eq": "RTX 3060"}, "num_gpus": {"eq": 1}, "gpu_ram": {"gte": 12000},
                     "reliability": {"gt": 0.99}, "geolocation": {"notin": ["CN"]},
                     "inet_down": {"gte": 100}, "dph_total": {"lte": 0.15}, "verified": {"eq": True}}
    two = vast_query(parse_filter({"gpu_name": ["RTX 5090", "RTX 4090"], "allowed_countries": ["US"]}))
    assert two["gpu_name"] == {"in": ["RTX 5090", "RTX 4090"]} and two["geolocation"] == {"notin": ["CN"], "in": ["US"]}


@pytest.mark.parametrize("filter_data", [
    {}, {"gpu_name": "Tesla T4", "need_vram_gib": 12}, {"need_vram_gib": 12, "max_dph": 0.2},
    {"gpu_name": ["RTX 3060", "RTX 4090"], "min_compute_cap": "8.6", "blocked_countries": "DE"},
    {"verified_only": False, "min_inet_down_mbps": 100, "allowed_countries": ["US", "NL"]},
])
def test_the_server_side_query_is_never_stricter_than_rank(filter_data):
    """Every offer rank() chooses comes back from a search with vast_query (the stand-in applies it as vast.ai
    does): the T4 listing no compute_cap among them."""
    from gpuops.emulator.vast_api import search

    flt = parse_filter(filter_data)
    found = {o["id"] for o in search(SAMPLE, vast_query(flt))}
    assert {o["id"] for o in rank(SAMPLE, flt).chosen} <= found


def test_an_empty_search_names_the_query_fields_to_loosen():
    from gpuops.offers import no_offers_message

    text = no_offers_message(parse_filter({"gpu_name": "Tesla T4", "need_vram_gib": 20, "max_dph": 0.05}), "API")
    assert "returned no offers" in text and "'Tesla T4'" in text and "20480 MiB" in text and "$0.05/h" in text
    assert "0 searched" not in text and "widen" not in text


def test_ranking_as_dict_is_one_json_object():
    ranking = rank(SAMPLE, parse_filter({"need_vram_gib": 12}))
    data = json.loads(json.dumps(ranking.as_dict(limit=3)))
    assert len(data["chosen"]) == 3 and data["chosen_count"] == len(ranking.chosen)
    assert data["offers"] == len(SAMPLE) and data["rejected_count"] == len(data["rejected"])
    assert data["rejected_by_rule"]["region"] == 3 and data["filter"]["need_vram_gib"] == 12
