"""S3 object storage (any S3-compatible server: AWS, SeaweedFS, MinIO, Ceph, rclone):
the archive device ``s3://bucket/key`` and the staging area's remote copies.

- :mod:`plugins.s3.spec`: device strings ``s3://bucket/key`` and ``s3://bucket/prefix/``.
- :mod:`plugins.s3.settings`: endpoint, region and credentials from msconfig's
  ``s3.*`` over the AWS environment and configuration files; the boto3 client.
- :mod:`plugins.s3.upload`: streaming multipart upload, bounded memory, parts retried,
  checked against the server's MD5s; visible only when complete, aborted otherwise.
- :mod:`plugins.s3.download`: ranged GETs, seekable, resumed after a broken read.
- :mod:`plugins.s3.journal`: aborting the uploads of runs that were killed.
- :mod:`plugins.s3.transfer`: push, fetch, remove (with object lock) for staging.
- :mod:`plugins.s3.plugin`: the ``ims_open_device`` hook.

See docs/offsite.md.
"""
_ERRORS = {"S3AuthFailed", "S3ConfigError", "S3ConnectFailed", "S3Error", "S3LinkLost", "S3Locked", "S3NoSpace",
           "S3NotFound", "S3ObjectChanged", "S3Replaced", "S3VerifyFailed"}


def __getattr__(name):
    # imported on first use: every command loads this plugin (plugins.s3.plugin)
    if name in _ERRORS:
        from plugins.s3 import errors
        return getattr(errors, name)
    raise AttributeError(name)
