"""The EC2 stand-in, started once per session: moto's EC2 and SSM over real HTTP on 127.0.0.1, and the network
stand-in (an HTTP proxy to emulated hosts) that makes moto's addresses answer. Each test gets them emptied and
seeded with runbook 002's starting point, with boto3 and gpuops pointed at them."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import S3StandIn

REGION = "ap-northeast-1"  # runbook 002's
ADMIN_CIDR = "203.0.113.7/32"


class Ec2StandIn(S3StandIn):
    """moto (every service; the S3 stand-in's lock applies), with faults aimed at one EC2 action: EC2 sends every
    call as a POST, so `fail_next(method)` alone would hit whichever call came first."""

    def __init__(self):
        super().__init__()
        self._action_faults: list[tuple[str, int, str, bool]] = []
        wrapped = self.server._server.app
        self.server._server.app = lambda environ, start: self._aimed(wrapped, environ, start)

    def fail_action(self, action: str, status: int = 503, code: str = "RequestLimitExceeded", after: bool = False):
        self._action_faults.append((action, status, code, after))

    def _aimed(self, wrapped, environ, start):
        import io
        from urllib.parse import parse_qs

        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
        fault = next((f for f in self._action_faults if f[0] == action), None)
        if fault is None:
            return wrapped(environ, start)
        self._action_faults.remove(fault)
        self.injected.append((action, fault[1]))
        self._faults.insert(0, ("POST", fault[1], fault[2], fault[3]))  # the S3 stand-in's machinery answers it
        return wrapped(environ, start)


@pytest.fixture(scope="session")
def moto_ec2():
    stand_in = Ec2StandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def ec2_network(moto_ec2, tmp_path_factory):
    from gpuops.emulator.ec2_network import Ec2Network
    from gpuops.emulator.gpu_hosts import GpuHostFleet

    with Ec2Network(moto_ec2.url, REGION, fleet=GpuHostFleet(tmp_path_factory.mktemp("ec2-hosts"))) as network:
        yield network


def ec2_client(url: str):
    import boto3

    return boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                 region_name=REGION).client("ec2", endpoint_url=url)


def fresh_world(moto_ec2, ec2_network, monkeypatch, ssh_from: str) -> SimpleNamespace:
    """A world of its own in the session's moto: its own Elastic IP, instance, group (resetting moto would cost
    seconds a test: it loads its AMI catalogue again)."""
    from gpuops.emulator.ec2_network import seed_app_host

    moto_ec2._faults.clear()
    moto_ec2._action_faults.clear()
    moto_ec2.injected.clear()
    ec2_network.reset()
    for name, value in {"AWS_ENDPOINT_URL": moto_ec2.url, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": REGION,
                        "GPUOPS_HOST_PROXY": ec2_network.url}.items():
        monkeypatch.setenv(name, value)
    seeded = seed_app_host(moto_ec2.url, REGION, ssh_from=ssh_from)
    ec2_network.boot(seeded["instance_id"])  # the live app answers before the migration starts
    return SimpleNamespace(**seeded, ec2=ec2_client(moto_ec2.url), network=ec2_network, moto=moto_ec2)


@pytest.fixture
def world(moto_ec2, ec2_network, monkeypatch):
    """Runbook 002 before the migration, SSH open only to an admin address (its other rules as the runbook's)."""
    yield fresh_world(moto_ec2, ec2_network, monkeypatch, ADMIN_CIDR)
    ec2_network.reset()


@pytest.fixture
def runbook_world(moto_ec2, ec2_network, monkeypatch):
    """Runbook 002 exactly: SSH open to 0.0.0.0/0."""
    yield fresh_world(moto_ec2, ec2_network, monkeypatch, "0.0.0.0/0")
    ec2_network.reset()
