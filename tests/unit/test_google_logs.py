"""Google's DEBUG request logs keep their records but lose their payloads (env values, secret versions)."""
import logging

from gpuops import google_logs


def test_payloads_of_requests_and_responses_are_dropped_and_the_rest_is_kept(caplog):
    google_logs.guard("google.cloud.run_v2.services.services.transports.rest")
    logger = logging.getLogger("google.cloud.run_v2.services.services.transports.rest")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("Sending request", extra={"httpRequest": {"payload": '{"env": [{"value": "planted-1"}]}',
                                                               "requestMethod": "PATCH"}})
        logger.debug("Received response", extra={"httpResponse": {"payload": "planted-2", "status": "OK"}})
    sent, received = caplog.records
    assert sent.httpRequest == {"payload": google_logs.REDACTED, "requestMethod": "PATCH"}
    assert received.httpResponse == {"payload": google_logs.REDACTED, "status": "OK"}
    assert "planted" not in caplog.text


def test_guarding_twice_adds_one_filter_and_the_cloud_run_clients_are_guarded():
    from gpuops import cloudrun

    cloudrun.connect("http://127.0.0.1:9")  # builds the clients; no request is sent
    cloudrun.connect("http://127.0.0.1:9")
    for kind in ("services", "revisions", "jobs", "executions"):
        filters = logging.getLogger(f"google.cloud.run_v2.services.{kind}.transports.rest").filters
        assert sum(isinstance(f, google_logs.NoPayloads) for f in filters) == 1
