"""The pipeline's blocks: Prefect's standard checks, and a saved bucket block reaching a real bucket."""
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.pipeline_blocks import HfHubTarget, StatusBucket, hub_settings, status_store
from gpuops import job_status as js
from tests.blocks.test_blocks import _NoLogoFetch


class TestStatusBucket(_NoLogoFetch, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return StatusBucket


class TestHfHubTarget(_NoLogoFetch, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return HfHubTarget


def test_a_saved_bucket_block_reaches_the_bucket_and_keeps_its_key_secret(prefect_api, status_bucket, monkeypatch):
    from prefect.client.orchestration import get_client

    StatusBucket(bucket=status_bucket.bucket, endpoint_url=status_bucket.url, access_key_id="test-access-key",
                 secret_access_key="test-secret-key").save("jobs-bucket", overwrite=True)
    for name in ("GPUOPS_STATUS_BUCKET", "GPUOPS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # the block alone says where and with which key

    store = status_store("jobs-bucket")
    store.create(js.new_status("abcdef1", js.parse_timestamp("2026-01-01T00:00:00Z")))
    assert store.read("abcdef1")["jobId"] == "abcdef1"
    assert "test-secret-key" not in repr(store)
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name("jobs-bucket", "gpuops-status-bucket", include_secrets=False)
    assert "test-secret-key" not in str(shown.data)  # the API shows the key masked


def test_an_environment_variable_wins_over_the_block(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert HfHubTarget(endpoint="https://hub.example", token="hf_from_block").settings() == (
        "http://127.0.0.1:1", "hf_from_env")
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.delenv("HF_TOKEN")
    assert HfHubTarget(endpoint="https://hub.example", token="hf_from_block").settings() == (
        "https://hub.example", "hf_from_block")
    assert hub_settings(None) == (None, None)
