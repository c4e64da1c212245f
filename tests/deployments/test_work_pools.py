"""Work pools as code: templates render into valid Cloud Run v2 Jobs and GPU containers; apply.py is idempotent."""

import asyncio
import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
from google.api.launch_stage_pb2 import LaunchStage
from google.cloud import run_v2
from google.protobuf.json_format import ParseError

from deployments import apply

ROOT = Path(__file__).resolve().parents[2]
POOLS_DIR = ROOT / "deployments" / "work_pools"
POOL_NAMES = ["gpuops-cloud-run-gpu", "gpuops-docker-gpu", "gpuops-kubernetes-gpu", "gpuops-process"]


def load(name: str) -> dict:
    return json.loads((POOLS_DIR / f"{name}.json").read_text())


def defaults_of(variables: dict) -> dict:
    return {k: p["default"] for k, p in variables["properties"].items() if "default" in p}


def schema_errors(template: dict) -> list[str]:
    """Problems with a variables block: not a JSON schema, or defaults that break it."""
    schema = template["variables"]
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [f"schema: {exc.message}"]
    validator = validator_cls(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(defaults_of(schema))
    ]


def fake_service_account() -> dict:
    """A well-formed service account key (fresh RSA key) so GcpCredentials builds offline."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "gpuops-test",
        "private_key_id": "test",
        "private_key": pem,
        "client_email": "worker@gpuops-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture(scope="module")
def service_account() -> dict:
    return fake_service_account()


@pytest.fixture(scope="module")
def render_job_body(prefect_api, service_account):
    """Render a Cloud Run v2 template the way the worker does for a flow run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration

    def render(base_job_template: dict, **values) -> dict:
        values = {"credentials": {"service_account_info": service_account}, **values}
        config = asyncio.run(
            CloudRunWorkerJobV2Configuration.from_template_and_values(base_job_template, values)
        )
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="gpu-smoke"))
        return copy.deepcopy(config.job_body)

    return render


def parse_job(body: dict) -> run_v2.Job:
    # The v2 worker sends job_body as the REST body of jobs.create (the job id goes in the
    # URL), so it must parse as a whole run_v2.Job; unknown fields are errors, as on Google.
    return run_v2.Job.from_json(json.dumps(body), ignore_unknown_fields=False)


# --- the files ---------------------------------------------------------------------------


def test_pool_files_are_the_four_pools():
    pools = apply.load_pool_files(POOLS_DIR)
    assert [p["name"] for p in pools] == POOL_NAMES
    assert [p["type"] for p in pools] == ["gpuops-cloud-run-v2", "docker", "kubernetes", "process"]
    assert all(p["description"] for p in pools)


def test_every_pool_type_is_a_worker_prefect_can_start():
    """`prefect worker start --pool NAME` looks the pool's type up among the installed collections."""
    from prefect.cli._worker_utils import _load_worker_class  # what `prefect worker start` calls

    for pool in apply.load_pool_files(POOLS_DIR):
        worker_class = _load_worker_class(pool["type"])
        assert worker_class is not None and worker_class.type == pool["type"], pool["name"]


@pytest.mark.parametrize("name", POOL_NAMES)
def test_variables_are_a_json_schema_whose_defaults_validate(name):
    from prefect.utilities.schema_tools import is_valid_schema, validate
    from prefect.utilities.templating import find_placeholders

    template = load(name)["base_job_template"]
    assert schema_errors(template) == []
    # The server's own checks: valid schema, defaults valid, every placeholder declared.
    is_valid_schema(template["variables"], preprocess=False)
    validate(
        defaults_of(template["variables"]),
        template["variables"],
        raise_on_error=True,
        preprocess=True,
        ignore_required=True,
        allow_none_with_default=True,
    )
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used <= set(template["variables"]["properties"])


@pytest.mark.parametrize(
    "name, variable, bad_default",
    [
        ("gpuops-cloud-run-gpu", "cpu", 8),  # must be a string
        ("gpuops-cloud-run-gpu", "gpu_count", "2"),  # Cloud Run: one GPU per instance
        ("gpuops-cloud-run-gpu", "gpu_zonal_redundancy_disabled", "false"),
        ("gpuops-docker-gpu", "container_create_kwargs", "--gpus all"),  # docker-py kwargs, an object
        ("gpuops-docker-gpu", "privileged", "yes"),
        ("gpuops-kubernetes-gpu", "gpu_count", "one"),
        ("gpuops-process", "stream_output", "yes"),
    ],
)
def test_a_wrongly_typed_default_fails_the_schema_check(name, variable, bad_default):
    template = load(name)["base_job_template"]
    template["variables"]["properties"][variable]["default"] = bad_default
    assert any(e.startswith(variable) for e in schema_errors(template))


def test_a_broken_schema_fails_the_schema_check():
    template = load("gpuops-process")["base_job_template"]
    template["variables"]["properties"]["stream_output"]["type"] = "bool"
    assert schema_errors(template)[0].startswith("schema:")


def test_cloud_run_gpu_template_extends_prefect_gcp_default():
    """Upgrading prefect-gcp must not leave the GPU template behind its default silently."""
    from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

    default = CloudRunWorkerV2.get_default_base_job_template()
    ours = load("gpuops-cloud-run-gpu")["base_job_template"]
    default_config = copy.deepcopy(default["job_configuration"])
    ours_config = copy.deepcopy(ours["job_configuration"])
    ours_task = ours_config["job_body"]["template"]["template"]
    assert ours_task.pop("nodeSelector") == {"accelerator": "{{ gpu_type }}"}
    assert ours_task.pop("gpuZonalRedundancyDisabled") == "{{ gpu_zonal_redundancy_disabled }}"
    limits = ours_task["containers"][0]["resources"]["limits"]
    assert limits.pop("nvidia.com/gpu") == "{{ gpu_count }}"
    assert ours_config == default_config
    ours_vars = ours["variables"]["properties"]
    for name, prop in default["variables"]["properties"].items():
        expected = {k: v for k, v in prop.items() if k not in ("default", "description", "examples")}
        assert {k: v for k, v in ours_vars[name].items() if k in expected} == expected, name
    assert ours["variables"]["definitions"] == default["variables"]["definitions"]


def test_docker_gpu_template_is_prefect_dockers_default_plus_a_gpu_request():
    """Only container_create_kwargs' default (and its description) differ from prefect-docker's."""
    from prefect_docker.worker import DockerWorker

    default = DockerWorker.get_default_base_job_template()
    ours = load("gpuops-docker-gpu")["base_job_template"]
    ours_kwargs = ours["variables"]["properties"].pop("container_create_kwargs")
    default_kwargs = default["variables"]["properties"].pop("container_create_kwargs")
    assert ours == default
    assert ours_kwargs.pop("default") == {"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]}
    assert "device_requests" in ours_kwargs.pop("description")
    default_kwargs.pop("default"), default_kwargs.pop("description")
    assert ours_kwargs == default_kwargs


def test_process_template_is_prefects_default():
    from prefect.workers.process import ProcessWorker

    expected = ProcessWorker.get_default_base_job_template()
    assert load("gpuops-process")["base_job_template"] == expected


# --- the Cloud Run v2 GPU template against the run_v2 proto types -------------------------


def test_cloud_run_gpu_job_body_is_a_valid_run_v2_job(render_job_body):
    body = render_job_body(load("gpuops-cloud-run-gpu")["base_job_template"])
    job = parse_job(body)

    task = job.template.template
    assert task.node_selector.accelerator == "nvidia-l4"
    limits = dict(task.containers[0].resources.limits)
    assert limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert "gpu_zonal_redundancy_disabled" in task  # set explicitly, not left to the default
    assert task.gpu_zonal_redundancy_disabled is False
    assert task.timeout.seconds == 600
    assert LaunchStage.Name(job.launch_stage) == "BETA"
    # Where Cloud Run expects them in the REST body the worker sends:
    raw_task = body["template"]["template"]
    assert raw_task["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert raw_task["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert raw_task["gpuZonalRedundancyDisabled"] is False


def test_cloud_run_gpu_job_values_override_defaults(render_job_body):
    body = render_job_body(
        load("gpuops-cloud-run-gpu")["base_job_template"],
        gpu_type="nvidia-rtx-pro-6000",
        cpu="20",
        memory="80Gi",
        gpu_zonal_redundancy_disabled=True,
    )
    task = parse_job(body).template.template
    assert task.node_selector.accelerator == "nvidia-rtx-pro-6000"
    assert task.gpu_zonal_redundancy_disabled is True
    assert dict(task.containers[0].resources.limits)["memory"] == "80Gi"


@pytest.mark.parametrize(
    "path, bad_value",
    [
        (("containers", 0, "resources", "limits", "nvidia.com/gpu"), 1),  # map<string,string>
        (("gpuZonalRedundancyDisabled",), "false"),  # bool, not a string
        (("nodeSelector", "accelerator"), ["nvidia-l4"]),
        (("timeout",), 600),  # Duration is "600s" in JSON
        (("gpuCount",), 1),  # no such field
    ],
)
def test_a_wrong_field_fails_the_run_v2_check(render_job_body, path, bad_value):
    body = render_job_body(load("gpuops-cloud-run-gpu")["base_job_template"])
    target = body["template"]["template"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad_value
    with pytest.raises(ParseError):
        parse_job(body)


def test_an_integer_gpu_count_variable_would_break_the_job_body(render_job_body):
    """Why gpu_count is a string: Prefect renders a lone placeholder with the value's type."""
    template = load("gpuops-cloud-run-gpu")["base_job_template"]
    template["variables"]["properties"]["gpu_count"] = {"type": "integer", "default": 1}
    body = render_job_body(template)
    assert body["template"]["template"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"
    ] == 1
    with pytest.raises(ParseError, match="limits"):
        parse_job(body)


# --- apply.py against a real Prefect server ------------------------------------------------


@pytest.fixture
def pool_dir(tmp_path):
    """A copy of the pool files under unique names, so tests sharing the server don't collide."""
    suffix = uuid.uuid4().hex[:8]
    names = []
    for path in sorted(POOLS_DIR.glob("*.json")):
        pool = json.loads(path.read_text())
        pool["name"] = f"{pool['name']}-{suffix}"
        (tmp_path / f"{pool['name']}.json").write_text(json.dumps(pool))
        names.append(pool["name"])
    return tmp_path, names


def read_pool(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name)
        except ObjectNotFound:
            return None


def edit_pool(directory: Path, name: str, change) -> dict:
    path = directory / f"{name}.json"
    pool = json.loads(path.read_text())
    change(pool)
    path.write_text(json.dumps(pool))
    return pool


def test_apply_creates_the_pools_then_changes_nothing(prefect_api, pool_dir, capsys):
    directory, names = pool_dir
    assert apply.main(["--dir", str(directory)]) == apply.EXIT_OK
    out = capsys.readouterr().out
    assert out.count("created ") == len(names), out
    for name in names:
        pool = read_pool(name)
        expected = json.loads((directory / f"{name}.json").read_text())
        assert (pool.type, pool.description) == (expected["type"], expected["description"])
        assert pool.base_job_template == expected["base_job_template"]

    assert apply.main(["--dir", str(directory)]) == apply.EXIT_OK
    out = capsys.readouterr().out
    assert out.count("in sync ") == len(names) and "created" not in out, out


def test_a_changed_template_is_reported_and_applied_only_with_update(
    prefect_api, pool_dir, capsys
):
    directory, names = pool_dir
    cloud_run = names[0]
    assert apply.main(["--dir", str(directory)]) == apply.EXIT_OK
    before = read_pool(cloud_run).base_job_template

    def smaller_cpu(pool):
        pool["base_job_template"]["variables"]["properties"]["cpu"]["default"] = "4"

    desired = edit_pool(directory, cloud_run, smaller_cpu)
    capsys.readouterr()

    assert apply.main(["--dir", str(directory)]) == apply.EXIT_PENDING
    out = capsys.readouterr().out
    assert f"differs      {cloud_run}" in out and "--update" in out
    assert '-        "default": "8",' in out and '+        "default": "4",' in out, out
    assert read_pool(cloud_run).base_job_template == before

    assert apply.main(["--dir", str(directory), "--update", "--dry-run"]) == apply.EXIT_PENDING
    assert f"would update {cloud_run}" in capsys.readouterr().out
    assert read_pool(cloud_run).base_job_template == before

    assert apply.main(["--dir", str(directory), "--update"]) == apply.EXIT_OK
    assert f"updated      {cloud_run}" in capsys.readouterr().out
    assert read_pool(cloud_run).base_job_template == desired["base_job_template"]
    assert apply.main(["--dir", str(directory)]) == apply.EXIT_OK


def test_dry_run_creates_nothing(prefect_api, pool_dir, capsys):
    directory, names = pool_dir
    assert apply.main(["--dry-run", "--dir", str(directory)]) == apply.EXIT_PENDING
    out = capsys.readouterr().out
    assert out.count("would create ") == len(names) and "(dry run)" in out, out
    assert all(read_pool(name) is None for name in names)


@pytest.mark.parametrize("entry", [["-m", "deployments.apply"], ["deployments/apply.py"]])
def test_the_script_runs_from_the_command_line(entry, tmp_path):
    # An empty directory fails before Prefect is imported: this checks the entry points
    # and the exit status quickly; the tests above drive main() against a real server.
    result = subprocess.run(
        [sys.executable, *entry, "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == apply.EXIT_ERROR, result.stdout + result.stderr
    assert "no work pool files" in result.stderr


def test_a_type_change_is_an_error(prefect_api, pool_dir, capsys):
    directory, names = pool_dir
    assert apply.main(["--dir", str(directory)]) == apply.EXIT_OK
    process = names[-1]
    edit_pool(directory, process, lambda pool: pool.update(type="docker"))
    assert apply.main(["--dir", str(directory), "--update"]) == apply.EXIT_ERROR
    assert "cannot be changed" in capsys.readouterr().out
    assert read_pool(process).type == "process"


def test_a_cloud_run_pool_of_prefect_gcps_type_is_told_to_be_recreated(prefect_api, pool_dir, capsys):
    """Pools applied before the file said gpuops-cloud-run-v2 keep `cloud-run-v2`: say how to move."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    directory, names = pool_dir
    cloud_run = names[0]
    pool = json.loads((directory / f"{cloud_run}.json").read_text())
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=cloud_run, type="cloud-run-v2",
                                               base_job_template=pool["base_job_template"]))
    assert apply.main(["--dir", str(directory), "--update"]) == apply.EXIT_ERROR
    out = capsys.readouterr().out
    assert "type is 'cloud-run-v2' in the API, 'gpuops-cloud-run-v2' in the file" in out, out
    assert f"prefect work-pool delete {cloud_run}" in out
    assert out.count("created ") == len(names) - 1


def test_the_server_refusing_a_template_is_an_error(prefect_api, pool_dir, capsys):
    directory, names = pool_dir

    def undeclared_variable(pool):
        pool["base_job_template"]["job_configuration"]["working_dir"] = "{{ nowhere }}"

    edit_pool(directory, names[-1], undeclared_variable)
    assert apply.main(["--dir", str(directory)]) == apply.EXIT_ERROR
    out = capsys.readouterr().out
    assert "create refused: HTTP 422: Value error, The variables specified" in out, out
    assert "undeclared variable(s): nowhere." in out, out
    assert out.count("created ") == len(names) - 1  # the other pools are still applied


def test_unreachable_or_unset_api_is_an_error(prefect_api, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert apply.main([]) == apply.EXIT_ERROR
    assert "unreachable" in capsys.readouterr().err
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert apply.main([]) == apply.EXIT_ERROR
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_a_malformed_pool_file_is_an_error(tmp_path, capsys):
    (tmp_path / "gpuops-x.json").write_text(json.dumps({"name": "gpuops-x", "type": "process"}))
    assert apply.main(["--dir", str(tmp_path)]) == apply.EXIT_ERROR
    assert "missing key(s) description, base_job_template" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage_error:
        apply.main(["--bogus"])
    assert usage_error.value.code == apply.EXIT_ERROR
