"""Local emulators gpuops tests and demos run against (labelled as emulators wherever seen)."""

from .cloudrun import EMULATOR_LABEL, CloudRunState, Fault, LoggedRequest
from .cloudrun_common import ApiError
from .cloudrun_jobs import ExecutionRunner, InstantSuccessRunner
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
    "LoggedRequest",
    "ProcessRunner",
    "main",
    "serve",
]
