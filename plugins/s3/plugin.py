"""The ``ims_open_device`` hook for ``s3://bucket/key``."""
from __future__ import annotations

from asm.hookspecs import hookimpl


@hookimpl
def ims_open_device(spec, mode, blocking_factor, config):
    if not spec.startswith("s3://"):
        return None
    # imported here: boto3 is loaded only when an S3 device is really used
    from plugins.s3.device import open_device
    return open_device(spec, mode, config)
