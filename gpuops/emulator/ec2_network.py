"""The EC2 stand-in's network: an HTTP forward proxy on 127.0.0.1 that reaches moto's instances as emulated hosts.

moto gives instances and Elastic IPs addresses nobody can reach. Named by `GPUOPS_HOST_PROXY` (gpuops'
bastion-proxy setting), this proxy asks moto's EC2 API, for each request to http://<ip>:<port>/..., which
running instance holds <ip> (an Elastic IP's association first: moto leaves an instance reporting an
Elastic IP that has moved on; then public, then private addresses) and forwards the request to that
instance's emulated host: one GpuHostFleet host per instance, booted on first use, its card from the
instance type. An address no running instance holds answers 502, as a gateway with no route does.

Test and demo hooks, read from the instance's tags when its host boots: `gpuops-emulator:app-fail`
(`all` or `generate`, the sample app's SAMPLE_APP_FAIL) and `gpuops-emulator:app-latency-ms`.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

from gpuops.emulator.gpu_hosts import GpuHostFleet
from gpuops.emulator.loopback_server import LOOPBACK, LoopbackServer

# Instance family -> the recorded nvidia-smi reading its host gets; a family not here has no GPU.
CARDS = {"g4dn": "t4", "g6": "l4", "p5": "h100"}
FAIL_TAG = "gpuops-emulator:app-fail"
LATENCY_TAG = "gpuops-emulator:app-latency-ms"
LABEL = "gpuops EC2 network stand-in (an HTTP proxy to emulated hosts; not AWS)"
BOOT_TIMEOUT_S = 20.0


def card_for(instance_type: str) -> str | None:
    return CARDS.get(instance_type.split(".", 1)[0])


class NoRoute(Exception):
    """Nothing answers at that address: the proxy says 502 with this message."""


class Ec2Network(LoopbackServer):
    """The proxy, the fleet of emulated hosts behind it, and the moto endpoint it asks."""

    name = "EC2 network stand-in"

    def __init__(self, ec2_endpoint: str, region: str, app_port: int = 55433, fleet: GpuHostFleet | None = None,
                 port: int = 0):
        super().__init__(port)
        self.ec2_endpoint, self.region, self.app_port = ec2_endpoint, region, app_port
        self._own_fleet = fleet is None
        self.fleet = fleet or GpuHostFleet()
        self._boot_lock = threading.Lock()
        self._ec2 = None
        self._by_address: dict[str, str] = {}  # an instance's own public or private address -> its ID
        self._descriptions: dict[str, dict] = {}  # instance ID -> as described when first reached

    # --- asking moto ----------------------------------------------------------------------

    def client(self):
        if self._ec2 is None:
            import boto3

            self._ec2 = boto3.session.Session().client(
                "ec2", endpoint_url=self.ec2_endpoint, region_name=self.region,
                aws_access_key_id="stand-in", aws_secret_access_key="stand-in")
        return self._ec2

    def instance_at(self, ip: str) -> dict:
        """The running instance holding `ip`, as EC2 described it; NoRoute when none does.

        Two calls a request (~12 ms on moto): the Elastic IP's association, asked every time because it
        is what moves, and the instance's state; an instance's own addresses and its description are kept.
        """
        from botocore.exceptions import ClientError

        try:
            addresses = self.client().describe_addresses(PublicIps=[ip]).get("Addresses", [])
        except ClientError:
            addresses = []  # not an Elastic IP
        if addresses:
            instance_id = addresses[0].get("InstanceId")
            if not instance_id:
                raise NoRoute(f"{ip} is an Elastic IP associated with no instance")
        else:
            instance_id = self._by_address.get(ip) or self._find_by_address(ip)
        statuses = self.client().describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)
        state = (statuses.get("InstanceStatuses") or [{}])[0].get("InstanceState", {}).get("Name", "gone")
        if state != "running":
            self.fleet.stop(instance_id)  # a stopped machine's app stops with it
            raise NoRoute(f"no running instance holds {ip} ({instance_id} is {state})")
        if instance_id not in self._descriptions:
            self._descriptions[instance_id] = self._described(InstanceIds=[instance_id])[0]
        return self._descriptions[instance_id]

    def _find_by_address(self, ip: str) -> str:
        for name in ("ip-address", "private-ip-address"):
            found = self._described(Filters=[{"Name": name, "Values": [ip]}])
            if found:
                running = [i for i in found if i["State"]["Name"] == "running"] or found
                self._by_address[ip] = running[0]["InstanceId"]
                return self._by_address[ip]
        raise NoRoute(f"no instance holds {ip}")

    def _described(self, **query) -> list[dict]:
        answer = self.client().describe_instances(**query)
        return [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]

    # --- hosts ----------------------------------------------------------------------------

    def host_for(self, instance: dict):
        """The instance's emulated host, booted on first use with its card and its tags' hooks."""
        instance_id = instance["InstanceId"]
        with self._boot_lock:
            host = self.fleet.get(instance_id)
            if host is None or not host.running:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
                env = {}
                if tags.get(FAIL_TAG):
                    env["SAMPLE_APP_FAIL"] = tags[FAIL_TAG]
                if tags.get(LATENCY_TAG):
                    env["SAMPLE_APP_LATENCY_MS"] = tags[LATENCY_TAG]
                host = self.fleet.start(instance_id, card_for(instance["InstanceType"]), env=env)
                if not self.fleet.wait_answering(instance_id, BOOT_TIMEOUT_S):
                    raise NoRoute(f"{instance_id}'s emulated host did not start: {host.log()[-300:]}")
        return host

    def boot(self, *instance_ids: str) -> None:
        """Boot these instances' hosts now, or every running instance's (the live app exists before any request)."""
        query = {"InstanceIds": list(instance_ids)} if instance_ids else \
            {"Filters": [{"Name": "instance-state-name", "Values": ["running"]}]}
        for instance in self._described(**query):
            self.host_for(instance)

    def reset(self) -> None:
        """Forget every instance and stop every host (moto was reset: IDs and addresses are reused)."""
        self.fleet.stop_all()
        self._by_address.clear()
        self._descriptions.clear()

    def _before_stop(self) -> None:
        if self._own_fleet:
            self.fleet.__exit__(None, None, None)
        else:
            self.fleet.stop_all()

    # --- the proxy ------------------------------------------------------------------------

    def route(self, url: str) -> str:
        """The emulated host's URL for a request to `url`, or NoRoute."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise NoRoute(f"only plain http://<address>:<port>/ requests are forwarded, not {url!r}")
        instance = self.instance_at(parts.hostname)
        port = parts.port or 80
        if port != self.app_port:
            raise NoRoute(f"nothing listens on port {port} of {instance['InstanceId']} (the app is on {self.app_port})")
        host = self.host_for(instance)
        return host.url + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _app(self):
        import httpx
        from starlette.concurrency import run_in_threadpool

        from gpuops.emulator.router import DROP_REQUEST, DROP_RESPONSE

        own_host = f"{LOOPBACK}:{self.port}"
        clients: dict = {}

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            url = _requested_url(scope, headers)
            if headers.get("host") == own_host and not scope["path"].startswith("http"):
                body = {"name": self.name, "label": LABEL, "ec2_endpoint": self.ec2_endpoint,
                        "app_port": self.app_port, "hosts": [h.host_id for h in self.fleet.hosts()]}
                return await _answer(send, 200 if scope["path"] == "/emulator/v1/info" else 404, body)
            if scope["method"] == "CONNECT":
                return await _answer(send, 405, {"error": "the stand-in forwards plain HTTP only"})
            request_body = await _read_body(receive)
            try:
                target = await run_in_threadpool(self.route, url)
            except NoRoute as exc:
                return await _answer(send, 502, {"error": str(exc), "stand_in": LABEL})
            forwarded = {k: v for k, v in headers.items() if k not in DROP_REQUEST and not k.startswith("proxy-")}
            if clients.get("http") is None:  # one client for the server's life: making one costs ~30 ms (TLS set-up)
                clients["http"] = httpx.AsyncClient(timeout=60, trust_env=False)
            try:
                answer = await clients["http"].request(scope["method"], target, headers=forwarded, content=request_body)
            except httpx.HTTPError as exc:
                return await _answer(send, 502, {"error": f"the host did not answer: {type(exc).__name__}"})
            kept = [(k.encode(), v.encode()) for k, v in answer.headers.items() if k.lower() not in DROP_RESPONSE]
            await send({"type": "http.response.start", "status": answer.status_code,
                        "headers": kept + [(b"content-length", str(len(answer.content)).encode())]})
            await send({"type": "http.response.body", "body": answer.content})

        return app


def _requested_url(scope: dict, headers: dict) -> str:
    """The absolute URL a proxy request names (absolute-form target), or built from the Host header."""
    path = scope["path"]
    if path.startswith("http://") or path.startswith("https://"):
        base = path
    else:
        base = f"http://{headers.get('host', '')}{path}"
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{base}?{query}" if query else base


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send, status: int, payload: dict) -> None:
    import json

    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# --- the runbook's starting point on the stand-in ------------------------------------------------

RUNBOOK_PORTS = (22, 55433, 55434, 8001, 50021)  # runbook 002's security group: SSH, backend, frontend, GPU, TTS
STAND_IN_DLAMI_PARAMETER = "/gpuops/stand-in/dlami/ami-id"  # AWS's own /aws/... names are reserved, even in moto


def seed_app_host(ec2_endpoint: str, region: str, *, ssh_from: str = "0.0.0.0/0", name: str = "video-message-app",
                  instance_type: str = "t3.large") -> dict:
    """Runbook 002 before the migration, in moto: the app on a t3.large behind an Elastic IP, its group open
    as the runbook's was (SSH from `ssh_from`), a key pair, and an SSM parameter holding an AMI for the GPU
    instance (standing in for the Deep Learning AMI's public parameter). Returns the IDs."""
    import uuid

    import boto3

    session = boto3.session.Session(aws_access_key_id="stand-in", aws_secret_access_key="stand-in",
                                    region_name=region)
    ec2 = session.client("ec2", endpoint_url=ec2_endpoint)
    ssm = session.client("ssm", endpoint_url=ec2_endpoint)
    # One image by name: describing all of moto's ~1,300 takes seconds.
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["al2023-ami-2023*x86_64"]}])["Images"]
    image = images[0]["ImageId"]
    subnet = ec2.describe_subnets()["Subnets"][0]
    group = ec2.create_security_group(GroupName=f"{name}-{uuid.uuid4().hex[:6]}", Description=f"{name} (runbook 002)",
                                      VpcId=subnet["VpcId"])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
         "IpRanges": [{"CidrIp": ssh_from if port == 22 else "0.0.0.0/0"}]} for port in RUNBOOK_PORTS])
    key = f"{name}-key"
    if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [key]}])["KeyPairs"]:
        ec2.create_key_pair(KeyName=key)
    instance = ec2.run_instances(
        ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1, SubnetId=subnet["SubnetId"],
        SecurityGroupIds=[group], KeyName=key,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}])["Instances"][0]
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=instance["InstanceId"])
    ssm.put_parameter(Name=STAND_IN_DLAMI_PARAMETER, Value=image, Type="String", Overwrite=True)
    return {"instance_id": instance["InstanceId"], "allocation_id": allocation["AllocationId"],
            "elastic_ip": allocation["PublicIp"], "security_group_id": group, "subnet_id": subnet["SubnetId"],
            "key_name": key, "image_id": image, "ami_parameter": STAND_IN_DLAMI_PARAMETER}
