"""EC2 and SSM through boto3, one function per remote call: instances, Elastic IPs, groups, AMIs, spot prices.

Endpoints are boto3's own: `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL_SSM` / `AWS_ENDPOINT_URL` point the
same code at a stand-in (moto). Transient errors (throttling, 5xx, lost connections) are retried by
gpuops.retry, botocore's own retries being off so the two do not multiply; 4xx never are. A launch is
made idempotent with a ClientToken and a tag holding it, read back before a retry sends it again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from gpuops import retry

# The Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023), x86_64: runbook 002's AMI, as AWS publishes it.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
TOKEN_TAG = "gpuops:client-token"  # the launch's ClientToken, so a retry finds the instance it made
MIGRATION_TAG = "gpuops:migration-of"  # the Elastic IP allocation an instance was launched to take over
LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class Instance:
    """One instance as described now."""

    id: str
    type: str
    state: str
    public_ip: str | None
    private_ip: str | None
    subnet_id: str | None
    security_group_ids: tuple[str, ...]
    key_name: str | None
    image_id: str | None
    zone: str | None
    launched: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Address:
    """One Elastic IP: its allocation, its address, the instance it is associated with, its tags."""

    allocation_id: str
    public_ip: str
    instance_id: str | None
    association_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launch sends, already validated."""

    instance_type: str
    image_id: str
    subnet_id: str | None
    security_group_ids: tuple[str, ...]
    key_name: str | None
    tags: dict[str, str]


class Ec2:
    """The EC2 and SSM clients of one region; botocore's retries off (gpuops.retry is the one loop)."""

    def __init__(self, region: str | None = None):
        import boto3  # only the flows that touch EC2 pay for it
        from botocore.config import Config

        session = boto3.session.Session(region_name=region)
        if not session.region_name:
            from gpuops.errors import BadInput

            raise BadInput("region (--region) is not set and neither is AWS_DEFAULT_REGION: pass e.g. "
                           "--region ap-northeast-1.")
        config = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
        self.region = session.region_name
        self.ec2 = session.client("ec2", config=config)
        self.ssm = session.client("ssm", config=config)

    @property
    def endpoint(self) -> str:
        return self.ec2.meta.endpoint_url

    @property
    def is_stand_in(self) -> bool:
        return not self.endpoint.rstrip("/").endswith(".amazonaws.com")

    def label(self) -> str:
        """How reports name the API; a stand-in says it is one."""
        if self.is_stand_in:
            return f"EC2 API at {self.endpoint} (a local stand-in, not AWS), region {self.region}"
        return f"EC2 API ({self.endpoint}), region {self.region}"


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _absent(exc: BaseException) -> bool:
    """An EC2/SSM answer that means "no such thing" (a 4xx the caller turns into a clear refusal)."""
    code = _code(exc)
    return code.endswith(".NotFound") or code.endswith(".Malformed") or code in (
        "ParameterNotFound", "InvalidInstanceType", "InvalidParameterValue")


def _tags(raw: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def _instance(raw: dict) -> Instance:
    launched = raw.get("LaunchTime")
    return Instance(
        id=raw["InstanceId"], type=raw["InstanceType"], state=raw["State"]["Name"],
        public_ip=raw.get("PublicIpAddress"), private_ip=raw.get("PrivateIpAddress"), subnet_id=raw.get("SubnetId"),
        security_group_ids=_group_ids(raw), key_name=raw.get("KeyName"), image_id=raw.get("ImageId"),
        zone=(raw.get("Placement") or {}).get("AvailabilityZone"),
        launched=launched.isoformat() if isinstance(launched, datetime) else launched, tags=_tags(raw.get("Tags")))


def _group_ids(raw: dict) -> tuple[str, ...]:
    groups = [g["GroupId"] for g in raw.get("SecurityGroups") or []]
    for interface in raw.get("NetworkInterfaces") or []:  # some APIs list them only on the interface
        groups += [g["GroupId"] for g in interface.get("Groups") or [] if g["GroupId"] not in groups]
    return tuple(groups)


def _instances(answer: dict) -> list[Instance]:
    return [_instance(i) for r in answer.get("Reservations", []) for i in r.get("Instances", [])]


# --- reads ------------------------------------------------------------------------------------


def _read(what: str, call, absent_codes: tuple[str, ...] = ()) -> dict | None:
    """One read, transient errors retried; None when the API says there is no such thing."""
    from botocore.exceptions import ClientError

    try:
        return retry.call(what, call)
    except ClientError as exc:
        if _absent(exc) or _code(exc) in absent_codes:
            return None
        raise


def describe_instance(api: Ec2, instance_id: str) -> Instance | None:
    answer = _read("describe instance", lambda: api.ec2.describe_instances(InstanceIds=[instance_id]))
    found = _instances(answer or {})
    return found[0] if found else None


def find_instances(api: Ec2, tags: dict[str, str], states: tuple[str, ...] = LIVE_STATES) -> list[Instance]:
    """Instances carrying every tag given, in one of `states`, oldest first."""
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    filters.append({"Name": "instance-state-name", "Values": list(states)})
    answer = retry.call("find instances", lambda: api.ec2.describe_instances(Filters=filters))
    return sorted(_instances(answer), key=lambda i: (i.launched or "", i.id))


def describe_address(api: Ec2, elastic_ip: str) -> Address | None:
    """The Elastic IP named by its allocation ID (`eipalloc-...`) or by its address."""
    by = {"AllocationIds": [elastic_ip]} if elastic_ip.startswith("eipalloc-") else {"PublicIps": [elastic_ip]}
    # EC2 answers AuthFailure for an address that is not this account's.
    answer = _read("describe Elastic IP", lambda: api.ec2.describe_addresses(**by), ("AuthFailure",))
    found = (answer or {}).get("Addresses") or []
    if not found:
        return None
    raw = found[0]
    return Address(raw["AllocationId"], raw["PublicIp"], raw.get("InstanceId"), raw.get("AssociationId"),
                   _tags(raw.get("Tags")))


def reachable_address(api: Ec2, instance: Instance) -> str | None:
    """Where the instance's own app is reached: its public address, unless that is an Elastic IP held by
    another instance or by none (an instance can go on reporting an Elastic IP moved off it: moto does after a
    disassociation), which would reach someone else's host; then its private address (through a bastion)."""
    if instance.public_ip:
        holder = describe_address(api, instance.public_ip)
        if holder is None or holder.instance_id == instance.id:
            return instance.public_ip
    return instance.private_ip


def security_groups(api: Ec2, group_ids: tuple[str, ...]) -> list[dict]:
    """The groups as EC2 describes them (ingress in `IpPermissions`); a missing one raises ClientError."""
    if not group_ids:
        return []
    answer = retry.call("describe security groups",
                        lambda: api.ec2.describe_security_groups(GroupIds=list(group_ids)))
    return answer.get("SecurityGroups", [])


def missing_groups(api: Ec2, group_ids: tuple[str, ...]) -> list[str]:
    """Which of the groups EC2 does not know (one read each: a batch read fails on the first missing one)."""
    return [g for g in group_ids
            if _read("describe security group", lambda g=g: api.ec2.describe_security_groups(GroupIds=[g])) is None]


def ami_from_parameter(api: Ec2, name: str) -> str | None:
    """The AMI ID an SSM parameter holds (the Deep Learning AMI's public one by default); None if absent."""
    answer = _read("read SSM parameter", lambda: api.ssm.get_parameter(Name=name))
    return answer["Parameter"]["Value"] if answer else None


def image_exists(api: Ec2, image_id: str) -> bool:
    return bool((_read("describe image", lambda: api.ec2.describe_images(ImageIds=[image_id])) or {}).get("Images"))


def key_pair_exists(api: Ec2, name: str) -> bool:
    answer = _read("describe key pair", lambda: api.ec2.describe_key_pairs(KeyNames=[name]))
    return bool((answer or {}).get("KeyPairs"))


def subnet_exists(api: Ec2, subnet_id: str) -> bool:
    answer = _read("describe subnet", lambda: api.ec2.describe_subnets(SubnetIds=[subnet_id]))
    return bool((answer or {}).get("Subnets"))


def instance_type_info(api: Ec2, instance_type: str) -> dict | None:
    """vCPUs, memory and GPUs of an instance type as EC2 describes it; None for a type EC2 does not offer."""
    answer = _read("describe instance type", lambda: api.ec2.describe_instance_types(InstanceTypes=[instance_type]))
    found = (answer or {}).get("InstanceTypes") or []
    if not found:
        return None
    raw = found[0]
    gpus = [{"name": g.get("Name"), "manufacturer": g.get("Manufacturer"), "count": g.get("Count"),
             "memory_mib": (g.get("MemoryInfo") or {}).get("SizeInMiB")}
            for g in (raw.get("GpuInfo") or {}).get("Gpus", [])]
    return {"instance_type": instance_type, "vcpus": (raw.get("VCpuInfo") or {}).get("DefaultVCpus"),
            "memory_mib": (raw.get("MemoryInfo") or {}).get("SizeInMiB"), "gpus": gpus}


def spot_price_history(api: Ec2, instance_types: tuple[str, ...], since: datetime) -> list[dict]:
    """Linux/UNIX spot prices since `since`, per type and zone: {instance_type, zone, usd_per_hour, at}."""
    def page() -> list[dict]:
        rows, token = [], None
        while True:
            kwargs = {"InstanceTypes": list(instance_types), "ProductDescriptions": ["Linux/UNIX"],
                      "StartTime": since, "MaxResults": 1000, **({"NextToken": token} if token else {})}
            answer = api.ec2.describe_spot_price_history(**kwargs)
            rows += answer.get("SpotPriceHistory", [])
            token = answer.get("NextToken")
            if not token or len(rows) >= 5000:  # a month of hourly changes in every zone is far less
                return rows

    rows = retry.call("spot price history", page)
    return [{"instance_type": r["InstanceType"], "zone": r.get("AvailabilityZone"),
             "usd_per_hour": float(r["SpotPrice"]), "at": r["Timestamp"].isoformat()} for r in rows]


# --- writes -----------------------------------------------------------------------------------


def client_token(flow_run_id: str, allocation_id: str, instance_type: str) -> str:
    """The same launch of the same flow run gets the same token (EC2 returns the instance it already made)."""
    digest = hashlib.sha256(f"{flow_run_id}|{allocation_id}|{instance_type}".encode()).hexdigest()
    return f"gpuops-{digest[:40]}"  # EC2 allows 64 ASCII characters


def launch(api: Ec2, spec: LaunchSpec, token: str) -> Instance:
    """One instance; sent again after a transient error only when no instance carries the token yet."""
    tags = {**spec.tags, TOKEN_TAG: token}
    kwargs = {"ImageId": spec.image_id, "InstanceType": spec.instance_type, "MinCount": 1, "MaxCount": 1,
              "ClientToken": token,
              "TagSpecifications": [{"ResourceType": "instance",
                                     "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]}
    if spec.subnet_id:
        kwargs["SubnetId"] = spec.subnet_id
    if spec.security_group_ids:
        kwargs["SecurityGroupIds"] = list(spec.security_group_ids)
    if spec.key_name:
        kwargs["KeyName"] = spec.key_name

    done = launched_with(api, token)
    if done is not None:  # this flow run launched it already (a retried task, a resumed run)
        return done
    sent = retry.call("launch instance", lambda: api.ec2.run_instances(**kwargs),
                      read_back=lambda: launched_with(api, token))
    if isinstance(sent, Instance):
        return sent
    return _instance(sent["Instances"][0])


def launched_with(api: Ec2, token: str) -> Instance | None:
    """The instance a launch with this ClientToken made, in any state but terminated."""
    found = find_instances(api, {TOKEN_TAG: token}, ("pending", "running", "stopping", "stopped"))
    return found[0] if found else None


def associate_address(api: Ec2, allocation_id: str, instance_id: str) -> None:
    """Move the Elastic IP onto the instance in one call (reassociation allowed: no moment without an owner)."""
    def there() -> bool | None:
        address = describe_address(api, allocation_id)
        return True if address is not None and address.instance_id == instance_id else None

    retry.call("associate Elastic IP",
               lambda: api.ec2.associate_address(AllocationId=allocation_id, InstanceId=instance_id,
                                                 AllowReassociation=True),
               read_back=there)


def tag_resource(api: Ec2, resource_id: str, tags: dict[str, str]) -> None:
    """Create or overwrite tags (idempotent)."""
    retry.call("tag resource", lambda: api.ec2.create_tags(
        Resources=[resource_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]))


def stop_instance(api: Ec2, instance_id: str) -> str:
    """Ask EC2 to stop the instance (idempotent); the state it reports now."""
    answer = retry.call("stop instance", lambda: api.ec2.stop_instances(InstanceIds=[instance_id]))
    changes = answer.get("StoppingInstances") or [{}]
    return (changes[0].get("CurrentState") or {}).get("Name", "unknown")
