"""The container runtime up to the Docker engine boundary: the real docker SDK over HTTP to gpuops' stand-in
engine (and to a real engine where one runs), a real local git repository as the source."""
import hashlib
import logging
import socket
import subprocess

import docker
import pytest
from prefect_docker.credentials import DockerRegistryCredentials

from gpuops.container_build import build_container, ghcr_image_repo
from gpuops.emulator.docker_engine import DockerEngineEmulator
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from test_source_build import make_repo

PASSWORD = "ghp_not-a-real-token-5e3c7a"
IMAGE = "ghcr.io/owner/app"
DOCKERFILE = "FROM scratch\nCOPY app.py /app.py\n"


@pytest.fixture(scope="module")
def docker_engine():
    with DockerEngineEmulator() as emulator:
        yield emulator


@pytest.fixture
def engine(docker_engine):
    docker_engine.reset()
    yield docker_engine
    docker_engine.reset()


@pytest.fixture
def credentials():
    return DockerRegistryCredentials(username="octocat", password=PASSWORD, registry_url="ghcr.io")


def app_repo(tmp_path, dockerfile: str | None = DOCKERFILE, name: str = "app") -> tuple[str, str]:
    """A one-commit git repository holding app.py and, unless None, `dockerfile`; returns (path, sha)."""
    files = {"app.py": "print('hello')\n", **({"Dockerfile": dockerfile} if dockerfile is not None else {})}
    [sha] = make_repo(tmp_path / name, files)
    return str(tmp_path / name), sha


def build(engine, tmp_path, sha_repo, lines, **kwargs) -> dict:
    repo, sha = sha_repo
    return build_container(repo, sha, tmp_path / "work", IMAGE, lines.append,
                           **{"docker_host": engine.docker_host, **kwargs})


def test_the_image_is_tagged_with_the_commit_and_pushed_with_the_registry_credentials(engine, tmp_path, credentials):
    repo, sha = app_repo(tmp_path)
    built = build(engine, tmp_path, (repo, sha), [], credentials=credentials)

    [received] = engine.builds
    assert received.tag == f"{IMAGE}:{sha}" and {"Dockerfile", "app.py"} <= set(received.files)
    [pushed] = engine.pushes
    assert (pushed.name, pushed.tag, pushed.username, pushed.serveraddress) == (IMAGE, sha, "octocat", "ghcr.io")
    assert pushed.password_sha256 == hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert built == {"imageUri": f"{IMAGE}:{sha}", "digest": pushed.digest, "commit": sha}
    assert built["digest"].startswith("sha256:")
    with docker.APIClient(base_url=engine.docker_host, version="auto") as client:
        image = client.inspect_image(built["imageUri"])
    assert image["RepoTags"] == [built["imageUri"]] and image["RepoDigests"] == [f"{IMAGE}@{built['digest']}"]


def test_build_and_push_lines_reach_on_line_in_order_as_they_come(engine, tmp_path):
    repo, sha = app_repo(tmp_path)
    seen = []  # each line with the number of pushes the engine had received when it arrived
    build_container(repo, sha, tmp_path / "work", IMAGE, lambda line: seen.append((line, len(engine.pushes))),
                    docker_host=engine.docker_host)
    lines = [line for line, _ in seen]
    order = ["Step 1/2 : FROM scratch", "Step 2/2 : COPY app.py /app.py", f"Successfully tagged {IMAGE}:{sha}",
             f"The push refers to repository [{IMAGE}]", next(x for x in lines if x.startswith(f"{sha}: digest: "))]
    assert [lines.index(x) for x in order] == sorted(lines.index(x) for x in order)
    assert all(pushes == 0 for line, pushes in seen if line.startswith("Step "))  # logged before the push began
    assert not any("[=====>" in line for line in lines)  # progress bars stay out of the log


def test_a_failing_run_step_fails_the_build_with_its_tail_and_pushes_nothing(engine, tmp_path, credentials):
    repo_sha = app_repo(tmp_path, "FROM scratch\nRUN false\n")
    with pytest.raises(CheckFailed, match="docker build failed: The command '/bin/sh -c false'") as failed:
        build(engine, tmp_path, repo_sha, [], credentials=credentials)
    assert "Step 2/2 : RUN false" in str(failed.value) and failed.value.details[0]["tail"]
    assert engine.requests("POST", r"/push$") == [] and engine.builds[0].image_id is None


@pytest.mark.parametrize("mode,status", [("http", 500), ("stream", 503), ("stream", 429)])
def test_a_transient_push_failure_is_retried_and_succeeds(engine, tmp_path, credentials, mode, status):
    """mode http: the engine answers 500; stream: the registry's 503/429, relayed by dockerd inside the stream."""
    engine.add_fault("POST", r"/push$", status, mode=mode)
    lines = []
    built = build(engine, tmp_path, app_repo(tmp_path), lines, credentials=credentials)
    assert built["digest"] == engine.pushes[-1].digest and built["digest"]
    assert [r.status for r in engine.requests("POST", r"/push$")] == [500 if mode == "http" else 200, 200]
    assert any("docker push: the last attempt failed transiently" in line for line in lines)


def test_a_push_failing_past_the_retries_could_not_run(engine, tmp_path, credentials):
    engine.add_fault("POST", r"/push$", 503, times=50)
    with pytest.raises(CouldNotRun, match="Docker engine answered 503.*still failing after"):
        build(engine, tmp_path, app_repo(tmp_path), [], credentials=credentials)


def test_the_password_is_in_no_line_result_exception_or_log_record(engine, tmp_path, credentials, caplog):
    caplog.set_level(logging.DEBUG)
    lines = []
    built = build(engine, tmp_path, app_repo(tmp_path), lines, credentials=credentials)
    # A registry whose error echoes what it was sent, and an engine failing past the retries.
    engine.add_fault("POST", r"/push$", 401, mode="stream", message=f"unauthorized: password {PASSWORD} refused")
    with pytest.raises(CheckFailed) as refused:
        build(engine, tmp_path, app_repo(tmp_path, name="again"), lines, credentials=credentials)
    engine.add_fault("POST", r"/push$", 500, times=50)
    with pytest.raises(CouldNotRun) as gave_up:
        build(engine, tmp_path, app_repo(tmp_path, name="third"), lines, credentials=credentials)
    said = [*lines, repr(built), str(refused.value), repr(refused.value.details), str(gave_up.value),
            repr(credentials), caplog.text, repr(engine.pushes), repr(engine.requests())]
    assert "unauthorized: password *** refused" in str(refused.value)
    assert not [text for text in said if PASSWORD in text]


def test_an_unreachable_engine_could_not_run_and_says_how_to_fix_it(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo, sha = app_repo(tmp_path)
    with pytest.raises(CouldNotRun, match="start Docker or set DOCKER_HOST"):
        build_container(repo, sha, tmp_path / "work", IMAGE, lambda _line: None, docker_host=f"tcp://127.0.0.1:{port}")


def test_a_repository_without_a_dockerfile_is_bad_input(engine, tmp_path):
    with pytest.raises(BadInput, match=r"repo \(--repo\) .* has no Dockerfile .* --runtime source"):
        build(engine, tmp_path, app_repo(tmp_path, dockerfile=None), [])
    assert engine.requests() == []


@pytest.mark.parametrize("image_repo", ["ghcr.io/Owner/app", "ghcr.io/owner/app:v1", "ghcr.io/owner/app@sha256:ab",
                                        "", "ghcr.io/owner/app/", "https://ghcr.io/owner/app"])
def test_an_image_repo_that_is_not_a_lowercase_registry_path_is_bad_input(image_repo, tmp_path):
    with pytest.raises(BadInput, match=r"image_repo \(--image-repo\) .* lowercase and without a tag"):
        build_container("/nowhere", "a" * 40, tmp_path / "work", image_repo, lambda _line: None)
    assert not (tmp_path / "work").exists()


def test_credentials_for_another_registry_are_refused_before_any_work(tmp_path, credentials):
    with pytest.raises(BadInput, match=r"credentials.registry_url 'ghcr.io' is not the registry .* \(docker.io\)"):
        build_container("/nowhere", "a" * 40, tmp_path / "work", "owner/app", lambda _line: None,
                        credentials=credentials)


def test_without_push_the_engine_from_docker_host_only_builds(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
    repo, sha = app_repo(tmp_path)
    built = build_container(repo, sha, tmp_path / "work", IMAGE, lambda _line: None, push=False)
    assert built == {"imageUri": f"{IMAGE}:{sha}", "digest": None, "commit": sha}
    assert engine.requests("POST", r"/push$") == [] and len(engine.builds) == 1


def test_the_default_image_repo_is_ghcr_owner_name_lowercase():
    assert ghcr_image_repo("https://github.com/Octo-Org/My.App.git") == "ghcr.io/octo-org/my.app"
    assert ghcr_image_repo("git@github.com:Owner/app.git") == "ghcr.io/owner/app"


def _docker_engine_runs() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_engine_runs(), reason="no Docker engine on this machine (`docker info` fails): "
                                                       "the stand-in engine covers the container runtime")
def test_a_real_engine_builds_the_image(tmp_path):
    repo, sha = app_repo(tmp_path)
    built = build_container(repo, sha, tmp_path / "work", "gpuops-test/app", lambda _line: None, push=False)
    client = docker.from_env()
    try:
        assert f"gpuops-test/app:{sha}" in client.images.get(built["imageUri"]).tags
    finally:
        client.images.remove(built["imageUri"], force=True)
