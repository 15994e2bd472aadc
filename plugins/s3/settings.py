"""Where the S3 server is and who we are to it: msconfig's ``s3.*`` options over the
standard AWS sources (environment: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION,
AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN,
AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE; files: ~/.aws/config and
~/.aws/credentials), which boto3 itself reads.  No secret ever goes into msg.conf."""
from __future__ import annotations

import os
from dataclasses import dataclass

from plugins.s3.errors import S3AuthFailed, S3ConfigError

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_PARTS = 10000


@dataclass
class Settings:
    """How to reach the S3 server and send to it: endpoint, credentials, parts, retries, locks."""

    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials: str | None = None
    addressing: str = "auto"
    partsize: int = 16 * MIB
    concurrency: int = 4
    retries: int = 5
    timeout: int = 60
    lockdays: int = 0
    lockmode: str = "GOVERNANCE"
    home: str | None = None          # IMS_HOME: where unfinished uploads are journalled

    @classmethod
    def from_config(cls, config) -> "Settings":
        if config is None:
            return cls()
        return cls(endpoint=config.get("s3.endpoint"), region=config.get("s3.region"),
                   profile=config.get("s3.profile"), credentials=config.get("s3.credentials"),
                   addressing=config.get("s3.addressing"), partsize=config.get_int("s3.partsize") * MIB,
                   concurrency=config.get_int("s3.concurrency"), retries=config.get_int("s3.retries"),
                   timeout=config.get_int("s3.timeout"), lockdays=config.get_int("s3.lockdays"),
                   lockmode=config.get("s3.lockmode").upper(), home=config.home)

    def endpoint_shown(self) -> str:
        return self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""

    def part_size(self, number: int) -> int:
        """The size of part ``number`` (1-based): s3.partsize, doubled every 2,000 parts,
        so 10,000 parts hold 31 x 2,000 x partsize (about 1 TB at 16 MiB)."""
        return self.partsize << min((number - 1) // 2000, 4)


def client(settings: Settings):
    """A boto3 S3 client for ``settings`` (thread-safe; shared by the upload threads).
    Retries are ours (:mod:`plugins.s3.retry`), so botocore makes one attempt."""
    import boto3
    import botocore.config
    import botocore.exceptions as be
    import botocore.session
    core = botocore.session.Session()
    if settings.credentials:
        if not os.path.isfile(settings.credentials):
            raise S3AuthFailed(f"s3.credentials {settings.credentials} does not exist: msconfig set "
                               f"s3.credentials /path/to/credentials (AWS shared credentials format)")
        core.set_config_variable("credentials_file", settings.credentials)
    if settings.profile:
        core.set_config_variable("profile", settings.profile)
    try:
        session = boto3.session.Session(botocore_session=core)
        region = session.region_name
    except be.ProfileNotFound as exc:
        raise S3ConfigError(f"{exc}: check s3.profile (or AWS_PROFILE), ~/.aws/config and the credentials "
                            f"file") from None
    endpoint = settings.endpoint_shown() or None
    style = settings.addressing
    if style == "auto":
        style = "path" if endpoint else "auto"
    region = settings.region or region or "us-east-1"
    cfg = botocore.config.Config(
        region_name=region, signature_version="s3v4",
        s3={"addressing_style": style},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.timeout, read_timeout=settings.timeout,
        max_pool_connections=settings.concurrency + 4,
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    try:
        return session.client("s3", endpoint_url=settings.endpoint or None, config=cfg)
    except be.ProfileNotFound as exc:
        raise S3ConfigError(f"{exc}: check s3.profile (or AWS_PROFILE), ~/.aws/config and the credentials "
                            f"file") from None
    except ValueError as exc:
        raise S3ConfigError(f"bad S3 endpoint {endpoint!r}: {exc}") from None
