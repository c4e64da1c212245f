"""The Elastic IP backend: all traffic moves from one instance to another in one switch (an EIP association).

The state lives on the allocation, in its tag `gpuops:rollout`, as CanaryState JSON (shortened to fit EC2's
256-character tag values). EC2 tags carry no version to send with a write, so every write re-reads the
address first and refuses when its tag or its association changed since this run last read or wrote them,
then reads its own write back: a change made in between is never written over.
"""
from __future__ import annotations

from dataclasses import replace

from gpuops import ec2
from gpuops.errors import BadInput, CheckFailed
from gpuops.rollout.backend import Live, Urls, now
from gpuops.traffic import ROLLED_BACK, CanaryState

STATE_TAG = "gpuops:rollout"
TAG_VALUE_MAX = 256  # characters in an EC2 tag value


def state_tag_value(state: CanaryState) -> str:
    """The state as JSON within a tag value: the failed checks are cut to fit (the report keeps them whole)."""
    checks = list(state.failed_checks)
    while True:
        value = replace(state, failed_checks=tuple(checks)).to_json()
        over = len(value) - TAG_VALUE_MAX
        if over <= 0:
            return value
        if not checks:
            raise ValueError(f"the rollout state does not fit an EC2 tag value ({len(value)} characters)")
        last = checks[-1]
        if len(last) > over + 13:  # worth keeping a start of it (JSON escapes may need another pass)
            checks[-1] = last[:len(last) - over - 3] + "..."
        else:
            checks.pop()


def state_of(address: ec2.Address) -> CanaryState | None:
    raw = address.tags.get(STATE_TAG)
    try:
        return CanaryState.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckFailed(f"the tag {STATE_TAG} on {address.allocation_id} is not a gpuops rollout state ({exc}): "
                          f"nothing was changed. Fix: correct or delete the tag (aws ec2 delete-tags --resources "
                          f"{address.allocation_id} --tags Key={STATE_TAG}).") from None


def missing(elastic_ip: str, region: str) -> BadInput:
    return BadInput(f"elastic_ip (--elastic-ip) {elastic_ip!r}: no such Elastic IP in {region}: pass its address or "
                    "allocation ID (aws ec2 describe-addresses lists them).")


def serving(address: ec2.Address) -> dict[str, int]:
    return {address.instance_id: 100} if address.instance_id else {}


class ElasticIpBackend:
    """Traffic of one Elastic IP, between the instance it is on (stable) and a launched one (candidate)."""

    kind = "elastic-ip"
    switch_only = True

    def __init__(self, api: ec2.Ec2, allocation_id: str, app_port: int, candidate_id: str | None = None,
                 resume_command: str = "gpuops ec2-migrate", rollback_command: str = "gpuops ec2-migrate --rollback"):
        self.api, self.target, self.app_port, self.candidate_id = api, allocation_id, app_port, candidate_id
        self.resume_command, self.rollback_command = resume_command, rollback_command
        self._seen: tuple[str | None, str | None] | None = None  # (state tag, instance) as last read or written

    # --- reading -------------------------------------------------------------------------

    def address(self) -> ec2.Address:
        found = ec2.describe_address(self.api, self.target)
        if found is None:
            raise missing(self.target, self.api.region)
        return found

    def read(self) -> Live:
        address = self.address()
        self._seen = (address.tags.get(STATE_TAG), address.instance_id)
        return Live(state_of(address), serving(address))

    def urls(self, state: CanaryState) -> Urls:
        """Each instance at its own address, whichever holds the Elastic IP now."""
        return Urls(self._url(state.candidate), self._url(state.stable))

    def _url(self, instance_id: str) -> str:
        instance = ec2.describe_instance(self.api, instance_id)
        where = ec2.reachable_address(self.api, instance) if instance is not None else None
        if where is None:
            raise CheckFailed(f"instance {instance_id} has no address to observe it at: is it still running?")
        return f"http://{where}:{self.app_port}"

    # --- writing -------------------------------------------------------------------------

    def deploy_candidate(self, steps: tuple[int, ...], flow_run_id: str) -> CanaryState:
        """Record the launched instance as the candidate at 0%: the Elastic IP stays where it is."""
        if not self.candidate_id:
            raise ValueError("the Elastic IP backend needs the launched instance (candidate_id) to deploy")
        address = self._unchanged("record the new instance")
        recorded = state_of(address)
        if recorded is not None and recorded.live:
            raise CheckFailed(f"another migration of {self.target} is under way (flow run {recorded.flow_run_id}, "
                              f"{recorded.stable} -> {recorded.candidate}, {recorded.phase}): nothing was changed. "
                              f"Run `{self.resume_command}` to resume it or `{self.rollback_command}`.")
        if not address.instance_id:
            raise BadInput(f"elastic_ip (--elastic-ip) {address.public_ip} is associated with no instance: nothing "
                           "serves to migrate from. Associate it with the running app host first.")
        if address.instance_id == self.candidate_id:
            raise BadInput(f"the Elastic IP is already on {self.candidate_id}, the instance to migrate to.")
        state = CanaryState(stable=address.instance_id, candidate=self.candidate_id, steps=steps, updated=now(),
                            flow_run_id=flow_run_id)
        self._record(state, address.instance_id)
        return state

    def set_split(self, state: CanaryState) -> None:
        """0%: the Elastic IP on stable; 100%: on the candidate; then the state. Refuses, writing nothing,
        when the address changed since this run last read or wrote it."""
        state = replace(state, updated=now())
        wanted = state.candidate if state.percent == 100 else state.stable
        address = self._unchanged(f"move it to {wanted}", also_ok=wanted)
        recorded = state_of(address)
        if recorded is None or (recorded.stable, recorded.candidate) != (state.stable, state.candidate):
            raise self._foreign("its rollout state is gone or names other instances", state)
        if address.instance_id != wanted:
            ec2.associate_address(self.api, self.target, wanted)
        self._record(state, wanted)

    def restore_stable(self, reasons: tuple[str, ...] = (), to: str | None = None) -> list[str]:
        """The Elastic IP back on stable (or on `to`), the state marked rolled back; what changed."""
        address = self.address()
        recorded = state_of(address)
        target = to or self._stable_of(address, recorded)
        self._must_run(target)
        changes = []
        if address.instance_id != target:
            ec2.associate_address(self.api, self.target, target)
            changes.append(f"Elastic IP {address.public_ip}: {address.instance_id or 'no instance'} -> {target}")
        if recorded is not None and recorded.phase != ROLLED_BACK:
            rolled = replace(recorded, phase=ROLLED_BACK, updated=now(),
                             failed_checks=reasons or recorded.failed_checks)
            self._record(rolled, target)
            changes.append(f"rollout state marked {ROLLED_BACK}")
        return changes

    # --- guards --------------------------------------------------------------------------

    def _unchanged(self, doing: str, also_ok: str | None = None) -> ec2.Address:
        """The address re-read; CheckFailed when its state tag or its instance is not what this run saw last
        (its own half-done move to `also_ok` excepted: a crash between the move and the tag)."""
        address = self.address()
        if self._seen is None:
            self._seen = (address.tags.get(STATE_TAG), address.instance_id)
            return address
        tag, instance = self._seen
        if address.tags.get(STATE_TAG) != tag:
            raise CheckFailed(f"the rollout state on {self.target} changed since this run last wrote it (another run "
                              f"or a person): did not {doing}. Nothing was written over; decide with "
                              f"`{self.rollback_command}` (it refuses stale records) or resume with "
                              f"`{self.resume_command}`.")
        if address.instance_id not in (instance, also_ok):
            raise CheckFailed(f"the Elastic IP {address.public_ip} was moved to {address.instance_id or 'no instance'} "
                              f"outside this run (it was on {instance}): did not {doing}. Nothing was written over; "
                              f"to put it back where you choose: `{self.rollback_command} --rollback-to INSTANCE`.")
        return address

    def _foreign(self, what: str, state: CanaryState) -> CheckFailed:
        return CheckFailed(f"{self.target}: {what} ({state.stable} -> {state.candidate} expected); stopped without "
                           f"writing. Decide with `{self.rollback_command}` or `{self.rollback_command} --rollback-to "
                           "INSTANCE`.")

    def _stable_of(self, address: ec2.Address, recorded: CanaryState | None) -> str:
        if recorded is None:
            raise BadInput(f"no rollout state on {self.target} ({address.public_ip}): nothing says which instance "
                           f"is stable. Pass the instance to move it to: `{self.rollback_command} --rollback-to "
                           "INSTANCE`.")
        if address.instance_id not in (recorded.stable, recorded.candidate, None):
            raise CheckFailed(f"the Elastic IP {address.public_ip} is on {address.instance_id}, which its migration "
                              f"({recorded.stable} -> {recorded.candidate}) never set: not moving it back to "
                              f"{recorded.stable}. Nothing was changed; to move it anyway: "
                              f"`{self.rollback_command} --rollback-to INSTANCE`.")
        return recorded.stable

    def _must_run(self, instance_id: str) -> None:
        instance = ec2.describe_instance(self.api, instance_id)
        if instance is None:
            raise BadInput(f"rollback_to (--rollback-to) {instance_id!r}: no such instance in {self.api.region}.")
        if instance.state != "running":
            raise CheckFailed(f"{instance_id} is {instance.state}: the Elastic IP was left where it is. Start it "
                              f"first (aws ec2 start-instances --instance-ids {instance_id}), then roll back again.")

    def _record(self, state: CanaryState, instance_id: str) -> None:
        """Write the state tag and read it back: another writer in between is reported, not hidden."""
        value = state_tag_value(state)
        ec2.tag_resource(self.api, self.target, {STATE_TAG: value})
        after = self.address()
        if after.tags.get(STATE_TAG) != value or after.instance_id != instance_id:
            raise CheckFailed(f"{self.target} changed while this run wrote its rollout state (the Elastic IP is "
                              f"on {after.instance_id or 'no instance'}; the tag {STATE_TAG} holds another value): "
                              f"decide with `{self.rollback_command}`.")
        self._seen = (value, instance_id)

