"""The registry adapter over real HTTP against gpuops' registry stand-in: manifests, token challenge, Hub figures."""
import pytest

from gpuops import host_rules
from gpuops.emulator.registry_api import RegistryEmulator, SeedImage
from gpuops.errors import BadInput, CouldNotRun
from gpuops.registry import ACCEPT, DOCKER_MANIFEST, OCI_INDEX, RegistryClient, check_image, image_size, \
    parse_image_ref, repo_popularity

RUNTIME = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
DEVEL = "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
HUGE = "valyriantech/ace-step-1.5:latest"


@pytest.fixture(scope="session")
def registry_emulator():
    with RegistryEmulator() as emulator:
        yield emulator


@pytest.fixture
def registry(registry_emulator, monkeypatch):
    """The stand-in emptied of faults and log, and gpuops pointed at it through its environment variables."""
    registry_emulator.reset()
    monkeypatch.setenv("GPUOPS_REGISTRY_URL", registry_emulator.url)
    monkeypatch.setenv("GPUOPS_DOCKER_HUB_API", registry_emulator.url)
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "3")
    yield registry_emulator
    registry_emulator.reset()


def manifest_requests(registry):
    return registry.requests("GET", "/manifests/")


@pytest.mark.parametrize("image, gb, layers, from_index, ok, warn", [
    (RUNTIME, 4.04, 7, True, True, False),
    (DEVEL, 25.32, 10, True, True, True),
    (HUGE, 173.0, 14, False, False, False),
    ("ubuntu:22.04", 0.03, 1, True, True, False),
])
def test_size_is_config_plus_layers_of_the_amd64_manifest(registry, image, gb, layers, from_index, ok, warn):
    size = image_size(image)
    assert (round(size.total_bytes / 1e9, 2), size.layers, size.from_index) == (gb, layers, from_index)
    assert size.platform == "linux/amd64" and size.digest.startswith("sha256:")
    verdict = host_rules.image_size_verdict(size.image, size.total_bytes)
    assert (verdict.ok, verdict.warn) == (ok, warn)


def test_an_index_is_asked_for_with_both_accept_kinds_then_the_platform_manifest_by_digest(registry):
    size = image_size(RUNTIME)
    first, *rest = manifest_requests(registry)
    assert first.accept == ACCEPT and "application/vnd.oci.image.index.v1+json" in first.accept
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in first.accept
    assert rest[-1].path.endswith(f"/manifests/{size.digest}") and rest[-1].status == 200


def test_the_token_challenge_is_answered_and_the_token_reused_for_the_repository(registry):
    image_size(RUNTIME)
    log = [(r.path.rsplit("/", 1)[-1][:7], r.status, r.authorized) for r in registry.requests()]
    # 401 with WWW-Authenticate -> the realm's token -> the same request again -> the amd64 manifest, token sent
    assert log == [("12.4.1-", 401, False), ("token", 200, False), ("12.4.1-", 200, True), ("sha256:", 200, True)]


def test_a_challenge_without_a_scope_is_answered_too(registry):
    # GET /v2/ (the API version check) challenges with realm and service only.
    with RegistryClient(registry.url, registry.url) as client:
        assert client.get_json("registry base", f"{registry.url}/v2/")[0] == {}
        with pytest.raises(BadInput, match="HTTP 404"):
            client.get_json("nothing", f"{registry.url}/nope")
    assert [(r.path, r.status, r.authorized) for r in registry.requests()] == [
        ("/v2/", 401, False), ("/token", 200, False), ("/v2/", 200, True)]


def test_a_client_that_takes_no_index_gets_the_amd64_manifest(registry):
    import httpx

    token = httpx.get(f"{registry.url}/token", params={"service": "gpuops-registry-emulator",
                                                       "scope": "repository:nvidia/cuda:pull"}).json()["token"]
    answer = httpx.get(f"{registry.url}/v2/nvidia/cuda/manifests/12.4.1-runtime-ubuntu22.04",
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json",
                                "Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["mediaType"] != OCI_INDEX and len(answer.json()["layers"]) == 7


def test_transient_errors_are_retried(registry):
    fault = registry.add_fault("GET", "/manifests/", 503, times=2)
    assert round(image_size(RUNTIME).total_bytes / 1e9, 2) == 4.04
    assert fault.fired == 2


def test_still_failing_after_retries_could_not_run(registry):
    registry.add_fault("GET", "/manifests/", 503, times=10)
    with pytest.raises(CouldNotRun, match="still failing after retries"):
        image_size(RUNTIME)
    assert len(manifest_requests(registry)) == 3  # GPUOPS_RETRY_ATTEMPTS


def test_an_unknown_tag_is_bad_input_and_not_retried(registry):
    with pytest.raises(BadInput, match="MANIFEST_UNKNOWN"):
        image_size("nvidia/cuda:99.9-nothing")
    assert [r.status for r in manifest_requests(registry)] == [401, 404]


def test_an_unknown_repository_is_answered_like_a_private_one_and_is_bad_input(registry):
    # As Docker Hub does: the token grants no pull on a repository that does not exist, so the registry says 401.
    with pytest.raises(BadInput, match="no such repository, or a private one"):
        image_size("nobody/nothing:1")


def test_a_private_image_is_refused_and_no_token_leaks_into_the_message(registry):
    registry.add_image(SeedImage("acme/private", "v1", {"linux/amd64": [1000]}, private=True))
    with pytest.raises(BadInput, match="public images only") as raised:
        image_size("acme/private:v1")
    tokens = registry.store.tokens
    assert tokens and not any(token in str(raised.value) for token in tokens)


def test_an_image_without_linux_amd64_is_refused(registry):
    registry.add_image(SeedImage("acme/arm-only", "v1", {"linux/arm64": [1000]}))
    with pytest.raises(BadInput, match="no linux/amd64 image in its index \\(it has linux/arm64\\)"):
        image_size("acme/arm-only:v1")


def test_a_docker_v2_manifest_without_index_is_read_directly(registry):
    registry.add_image(SeedImage("acme/plain", "v1", {"linux/amd64": [10, 20]}, config_size=5, index=False,
                                 media_type=DOCKER_MANIFEST))
    size = image_size("acme/plain:v1")
    assert (size.total_bytes, size.from_index, size.media_type) == (35, False, DOCKER_MANIFEST)


def test_docker_hub_figures_and_the_trust_verdicts_they_give(registry):
    huge = repo_popularity(HUGE)
    assert (huge.pulls, huge.stars, huge.official) == (404, 0, False)
    assert not host_rules.trust_verdict(huge).ok
    official = repo_popularity("ubuntu:22.04")
    assert official.official and official.name == "library/ubuntu" and host_rules.trust_verdict(official).ok
    cuda = repo_popularity(RUNTIME)
    assert cuda.pulls == 100_000_000 and cuda.last_updated.year == 2026
    assert {r.path for r in registry.requests("GET", "/v2/repositories/")} == {
        "/v2/repositories/valyriantech/ace-step-1.5/", "/v2/repositories/library/ubuntu/",
        "/v2/repositories/nvidia/cuda/"}


def test_popularity_of_an_unknown_repository_is_bad_input(registry):
    with pytest.raises(BadInput, match="not found"):
        repo_popularity("nobody/nothing")


def test_images_off_docker_hub_have_no_hub_figures_and_nothing_is_asked(registry):
    assert repo_popularity("ghcr.io/owner/app:v1") is None
    assert registry.requests() == []


@pytest.mark.parametrize("image, registry_host, repository, reference", [
    ("ubuntu", "docker.io", "library/ubuntu", "latest"),
    ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", "docker.io", "nvidia/cuda", "12.4.1-runtime-ubuntu22.04"),
    ("docker.io/library/python:3.11-slim", "docker.io", "library/python", "3.11-slim"),
    ("ghcr.io/owner/app:v1", "ghcr.io", "owner/app", "v1"),
    ("localhost:5000/app", "localhost:5000", "app", "latest"),
    ("nvcr.io/nvidia/pytorch@sha256:" + "a" * 64, "nvcr.io", "nvidia/pytorch", "sha256:" + "a" * 64),
])
def test_image_references_follow_dockers_rules(image, registry_host, repository, reference):
    ref = parse_image_ref(image)
    assert (ref.registry, ref.repository, ref.reference) == (registry_host, repository, reference)


@pytest.mark.parametrize("image", ["", "Upper/Case:1", "a//b", "x@sha256:short", None])
def test_bad_image_references_are_refused_with_an_example(image):
    with pytest.raises(BadInput, match="nvidia/cuda:12.4.1-runtime-ubuntu22.04"):
        parse_image_ref(image)


def test_check_image_reads_both_and_judges_size_tag_and_trust(registry):
    huge = check_image(HUGE)
    assert [(v.rule, v.ok) for v in huge.verdicts] == [("image-size", False), ("image-devel", True), ("trust", False)]
    assert huge.source.pulls == 404 and huge.size.total_bytes > 100 * 1000**3
    devel = check_image(DEVEL)
    assert [v.rule for v in devel.verdicts if v.warn] == ["image-size", "image-devel"]
    assert not [v for v in check_image(DEVEL, inference=False).verdicts if v.rule == "image-devel" and v.warn]
