"""Cost figures come from stated inputs and a dated price table."""
import pytest

from gpuops import cost


def test_the_runbooks_hours_at_todays_prices():
    result = cost.estimate("nvidia-l4", job_hours=100, service_hours=50)
    assert result["kind"] == "estimate" and result["rate"]["total"] == pytest.approx(1.42)
    assert result["usd_per_month"] == pytest.approx(150 * 1.42)
    assert "as of 2026-11-22" in result["price_source"]


def test_min_instances_are_billed_all_month():
    result = cost.estimate("nvidia-l4", 0, 0, min_instances=1)
    assert result["usd_per_month"] == pytest.approx(730 * 1.42)


def test_measured_seconds_are_billed_per_second():
    assert cost.measured("nvidia-l4", 3600)["usd"] == pytest.approx(1.42)


def test_unknown_gpu_has_no_price_and_says_which_are_known():
    with pytest.raises(ValueError, match="nvidia-l4"):
        cost.hourly("nvidia-h100")
