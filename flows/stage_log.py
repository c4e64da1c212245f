"""A pipeline stage's lines: to its log in the bucket (batched, as they come) and to the Prefect run log."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from prefect import get_run_logger

from gpuops.log_shipper import LogShipper


@contextmanager
def stage_log(store, job_id: str, stage: str) -> Iterator[Callable[[str], None]]:
    """Yields `say(line)`; on leaving, what is buffered is sent, and lines the bucket never took are reported."""
    logger = get_run_logger()
    shipper = LogShipper(lambda text: store.append_log(job_id, stage, text))

    def say(line: str) -> None:
        shipper(line)
        logger.info("%s", line)

    try:
        with shipper:
            yield say
    finally:
        if shipper.unsent:
            logger.warning("%d lines never reached %s's %s log in the bucket (%s); they are in this run's log",
                           shipper.unsent, job_id, stage, shipper.last_error)
