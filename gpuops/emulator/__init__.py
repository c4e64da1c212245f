"""Local emulators gpuops tests and demos run against (labelled as emulators wherever seen)."""

from .cloudrun_state import EMULATOR_LABEL, CloudRunState, Fault, LoggedRequest
from .cloudrun_common import ApiError
from .cloudrun_jobs import ExecutionRunner, InstantSuccessRunner, RunsUntilCancelled
from .cloudrun_server import CloudRunEmulator, main, serve
from .workloads import ProcessRunner

__all__ = [
    "EMULATOR_LABEL",
    "ApiError",
    "CloudRunEmulator",
    "CloudRunState",
    "ExecutionRunner",
    "Fault",
    "InstantSuccessRunner",
    "RunsUntilCancelled",
    "LoggedRequest",
    "ProcessRunner",
    "main",
    "serve",
]
