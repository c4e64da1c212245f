"""Reading artifacts back from the test's Prefect server."""


def latest_artifact(key: str):
    """The data of the newest artifact with this key. Prefect sorts by id (a random UUID) unless told
    otherwise, so the newest must be asked for: another test on the same server may have written the key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return found[0].data
