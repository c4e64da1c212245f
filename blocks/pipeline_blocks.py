"""Blocks for the build -> run -> publish pipeline: the status bucket and the Hugging Face Hub.

CONTRACTS §2: an environment variable (GPUOPS_STATUS_BUCKET, GPUOPS_S3_ENDPOINT, HF_ENDPOINT,
HF_TOKEN) wins over a block field. Keys are SecretStr: the UI and the API show them masked, and
they reach boto3 or huggingface_hub and nothing else.
"""
from __future__ import annotations

import os
from typing import Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class StatusBucket(Block):
    """The S3-compatible bucket (Cloudflare R2, S3, a local stand-in) holding `{jobId}/status.json` and logs."""

    _block_type_name = "gpuops status bucket"
    _block_type_slug = "gpuops-status-bucket"
    _documentation_url = "https://developers.cloudflare.com/r2/api/s3/api/"

    bucket: str = Field(description="Bucket name, e.g. `gpuops-jobs`. GPUOPS_STATUS_BUCKET wins over it.")
    endpoint_url: Optional[str] = Field(
        default=None,
        description="S3 endpoint: R2 is `https://<account>.r2.cloudflarestorage.com`; empty is AWS S3. "
                    "GPUOPS_S3_ENDPOINT wins over it.")
    region_name: Optional[str] = Field(
        default=None, description="Region; empty picks `auto` for R2, else AWS_REGION or us-east-1.")
    access_key_id: Optional[str] = Field(default=None, description="Access key ID; empty uses boto3's own chain.")
    secret_access_key: Optional[SecretStr] = Field(default=None, description="Secret access key (stored encrypted).")

    def store(self, **overrides):
        from gpuops.status_store import StatusStore

        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        return StatusStore(bucket=os.environ.get("GPUOPS_STATUS_BUCKET") or self.bucket,
                           endpoint_url=os.environ.get("GPUOPS_S3_ENDPOINT") or self.endpoint_url,
                           region_name=self.region_name, access_key_id=self.access_key_id,
                           secret_access_key=secret, **overrides)


class HfHubTarget(Block):
    """Where the pipeline publishes: a Hugging Face Hub endpoint and the token that may write there."""

    _block_type_name = "gpuops Hugging Face Hub"
    _block_type_slug = "gpuops-hf-hub"
    _documentation_url = "https://huggingface.co/docs/huggingface_hub/guides/upload"

    endpoint: Optional[str] = Field(default=None, description="Hub URL; empty is huggingface.co. HF_ENDPOINT wins.")
    token: Optional[SecretStr] = Field(default=None, description="A write token (stored encrypted). HF_TOKEN wins.")

    def settings(self) -> tuple[str | None, str | None]:
        """(endpoint, token) with the environment winning."""
        token = self.token.get_secret_value() if self.token else None
        return os.environ.get("HF_ENDPOINT") or self.endpoint, os.environ.get("HF_TOKEN") or token


def status_store(block_name: str | None = None, **overrides):
    """The status bucket from the named block, else from the environment alone."""
    from gpuops.status_store import configured

    if block_name:
        return StatusBucket.load(block_name).store(**overrides)
    return configured(**overrides)


def hub_settings(block_name: str | None = None) -> tuple[str | None, str | None]:
    """(endpoint, token) for publishing: the named block with the environment winning, else the environment."""
    if block_name:
        return HfHubTarget.load(block_name).settings()
    return os.environ.get("HF_ENDPOINT") or None, os.environ.get("HF_TOKEN") or None
