"""Prefect's standard block checks, and the profile's link to the GPU rules."""
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.cloud_run_blocks import CloudRunTarget, GpuProfile
from gpuops.gpu_rules import check


class _NoLogoFetch:
    # The standard suite downloads the logo; these machines reach no network and the blocks
    # have no logo of their own.
    @pytest.mark.skip(reason="needs the internet to download a logo; gpuops blocks ship none")
    def test_has_a_valid_image(self, block):
        pass


class TestCloudRunTarget(_NoLogoFetch, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return CloudRunTarget


class TestGpuProfile(_NoLogoFetch, BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return GpuProfile


def test_default_profile_is_the_runbook_l4_shape_and_passes_the_rules():
    profile = GpuProfile()
    assert (profile.gpu_type, profile.gpu_count, profile.cpu, profile.memory) == ("nvidia-l4", 1, "8", "32Gi")
    assert check(profile.spec(), "us-central1").ok


def test_profile_spec_carries_what_the_rules_judge():
    spec = GpuProfile(cpu="2", max_instances=1).spec()
    result = check(spec, "us-central1")
    assert [v.rule for v in result.violations] == ["gpu-min-cpu"]
    assert any("maintenance" in w for w in result.warnings)



# The credentials field is typed lazily so that importing blocks.cloud_run_blocks does not import
# prefect_gcp (1.5 s); what Prefect, its UI and its API see must be what a field typed
# `Optional[GcpCredentials]` gave.

def test_stored_gcp_credentials_schema_is_the_installed_prefect_gcp_one():
    from prefect_gcp import GcpCredentials

    from blocks.cloud_run_blocks import gcp_credentials_schema

    assert gcp_credentials_schema() == GcpCredentials.model_json_schema(), (
        "prefect-gcp changed GcpCredentials' schema: regenerate blocks/gcp_credentials.schema.json "
        "with `python -m blocks.cloud_run_blocks --write-gcp-credentials-schema`")


def test_target_schema_references_gcp_credentials_as_a_nested_block():
    from prefect_gcp import GcpCredentials

    schema = CloudRunTarget.model_json_schema()
    assert schema["properties"]["credentials"] == {
        "anyOf": [{"$ref": "#/definitions/GcpCredentials"}, {"type": "null"}],
        "default": None,
        "description": "prefect-gcp credentials; empty means Application Default Credentials.",
        "position": 4,
    }
    assert schema["definitions"] == {"GcpCredentials": GcpCredentials.model_json_schema()}
    assert schema["block_schema_references"] == {"credentials": GcpCredentials._to_block_schema_reference_dict()}
    assert schema["secret_fields"] == [f"credentials.{s}" for s in GcpCredentials.model_json_schema()["secret_fields"]]


def test_flow_parameter_schema_of_a_target_is_what_pydantic_gives_gcp_credentials():
    from typing import Optional

    from prefect_gcp import GcpCredentials
    from pydantic import create_model
    from prefect.utilities.callables import parameter_schema

    def fn(target: Optional[CloudRunTarget] = None):
        pass

    eager = create_model("Eager", credentials=(Optional[GcpCredentials], None))
    expected = eager.model_json_schema(ref_template="#/definitions/{model}")["$defs"]["GcpCredentials"]
    definitions = parameter_schema(fn).definitions
    assert definitions["GcpCredentials"] == expected
    assert definitions["CloudRunTarget"]["properties"]["credentials"]["anyOf"][0] == {"$ref": "#/definitions/GcpCredentials"}


def test_credentials_validate_into_gcp_credentials(service_account_info):
    from prefect_gcp import GcpCredentials
    from pydantic import ValidationError

    given = GcpCredentials(service_account_info=service_account_info)
    assert CloudRunTarget(project="p", region="r", service="s", credentials=given).credentials is given
    from_dict = CloudRunTarget(project="p", region="r", service="s",
                               credentials={"service_account_info": service_account_info, "project": "q"})
    assert isinstance(from_dict.credentials, GcpCredentials) and from_dict.credentials.project == "q"
    assert from_dict.google_credentials().service_account_email == service_account_info["client_email"]
    assert "SECRET" not in str(from_dict.model_dump(mode="json"))
    for bad in (5, "a-key", {"service_account_file": 7}):
        with pytest.raises(ValidationError):
            CloudRunTarget(project="p", region="r", service="s", credentials=bad)
    assert CloudRunTarget(project="p", region="r", service="s").google_credentials() is None


def test_target_with_credentials_saves_and_loads_through_the_prefect_api(prefect_api, service_account_info):
    from prefect.client.orchestration import get_client
    from prefect_gcp import GcpCredentials

    target = CloudRunTarget(project="nca-toolkit-438301", region="us-central1", service="svc",
                            credentials=GcpCredentials(service_account_info=service_account_info))
    target.save("lazy-credentials-test", overwrite=True)
    loaded = CloudRunTarget.load("lazy-credentials-test")
    assert isinstance(loaded.credentials, GcpCredentials)
    assert loaded.credentials.service_account_info.get_secret_value() == service_account_info
    with get_client(sync_client=True) as client:
        # Registering the target registered prefect-gcp's schema of GcpCredentials, as before.
        nested = client.read_block_schema_by_checksum(GcpCredentials._calculate_schema_checksum())
        assert nested.block_type.slug == "gcp-credentials"
        own = client.read_block_schema_by_checksum(CloudRunTarget._calculate_schema_checksum())
        assert own.fields["block_schema_references"]["credentials"]["block_type_slug"] == "gcp-credentials"


@pytest.fixture(scope="module")
def service_account_info() -> dict:
    from tests.deployments.test_work_pools import fake_service_account

    info = fake_service_account()
    info["private_key_id"] = "SECRET-id"
    return info
