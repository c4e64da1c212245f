"""Summaries of a live service: names only, findings with fixes."""
import json

from gpuops.revision import summarize

SERVICE = {
    "name": "projects/p-123456/locations/us-central1/services/svc",
    "uri": "https://svc-abc.a.run.app",
    "latestReadyRevision": "projects/p-123456/locations/us-central1/services/svc/revisions/svc-00002-xyz",
    "trafficStatuses": [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 90},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "svc-00001-abc", "percent": 10, "tag": "old"},
    ],
}
REVISION = {
    "name": "projects/p-123456/locations/us-central1/services/svc/revisions/svc-00002-xyz",
    "containers": [{"image": "img:1", "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                    "env": [{"name": "GITHUB_TOKEN", "value": "ghp_secretvalue"},
                            {"name": "DB_PASSWORD", "valueSource": {"secretKeyRef": {"secret": "db"}}},
                            {"name": "MODE", "value": "prod"}, {"name": "EMPTY_KEY"}]}],
}


def test_names_secret_refs_suspects_and_never_a_value():
    summary = summarize(SERVICE, REVISION)
    assert summary["env_names"] == ["GITHUB_TOKEN", "DB_PASSWORD", "MODE", "EMPTY_KEY"]
    assert summary["secret_env"] == [{"name": "DB_PASSWORD", "secret": "db", "version": "latest"}]
    assert summary["plaintext_secret_suspects"] == ["GITHUB_TOKEN"]
    assert "ghp_secretvalue" not in json.dumps(summary) and "prod" not in json.dumps(summary)


def test_traffic_resolves_latest_and_keeps_tags():
    assert summarize(SERVICE, REVISION)["traffic"] == [
        {"revision": "svc-00002-xyz", "percent": 90, "tag": None, "latest": True},
        {"revision": "svc-00001-abc", "percent": 10, "tag": "old", "latest": False},
    ]


def test_findings_name_unspecified_environment_default_account_and_the_secret():
    codes = {f["code"]: f for f in summarize(SERVICE, REVISION)["findings"]}
    assert set(codes) == {"plaintext-secret", "not-gen2", "default-service-account"}
    assert codes["not-gen2"]["severity"] == "warning"
    gen1 = summarize(SERVICE, {**REVISION, "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN1"})
    assert next(f for f in gen1["findings"] if f["code"] == "not-gen2")["severity"] == "error"
    assert "Secret Manager" in codes["plaintext-secret"]["fix"]


def test_a_latest_revision_without_traffic_is_named():
    pinned = {**SERVICE, "trafficStatuses": [{"revision": "svc-00001-abc", "percent": 100}]}
    codes = {f["code"]: f for f in summarize(pinned, REVISION)["findings"]}
    assert "svc-00001-abc" in codes["latest-not-serving"]["message"]
    assert "latest-not-serving" not in {f["code"] for f in summarize(SERVICE, REVISION)["findings"]}


def test_the_describe_report_lists_names_findings_and_traffic_without_a_value():
    from gpuops.revision import env_kind, summary_markdown

    summary = {**summarize(SERVICE, REVISION), "captured_at": "2026-11-23T10:00:00Z"}
    text = summary_markdown(summary, "emulator")
    assert "| revision | `svc-00002-xyz` |" in text and "- 90% → `svc-00002-xyz`" in text
    assert "DB_PASSWORD" in text and "ghp_secretvalue" not in text and "## Findings" in text
    assert [env_kind(n, summary) for n in ("GITHUB_TOKEN", "DB_PASSWORD", "MODE")] == [
        "plaintext, looks like a secret", "secret reference", "plaintext"]
