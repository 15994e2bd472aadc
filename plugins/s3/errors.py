"""Every failure a user can meet on an S3 device, one class each, and the translation
of boto3's exceptions into them.

Like the ssh plugin's, they refine the remote-device failures of :mod:`asm.devices`
(a DeviceError with the exit status of its kind, and an OSError with errno/strerror set).
"""
from __future__ import annotations

import errno as _errno

from asm.devices import (RemoteAuthFailed, RemoteConnectFailed, RemoteDeviceError, RemoteLinkLost,
                         RemoteNoSpace, RemoteNotFound, RemoteVerifyFailed)
from asm.errors import EXIT_LOCKED, EXIT_USAGE


class S3Error(RemoteDeviceError):
    """An S3 request failed; the message says which object, what and why.  ``code`` and
    ``server_message``: what the server answered, when it answered (see translate)."""
    code = ""
    server_message = ""


class S3ConfigError(S3Error):
    """The S3 settings cannot work (a profile that does not exist, a bad device string)."""
    default_errno = _errno.EINVAL
    status = EXIT_USAGE


class S3ConnectFailed(S3Error, RemoteConnectFailed):
    """The endpoint cannot be reached (refused, unknown host, TLS failure, timeout)."""


class S3AuthFailed(S3Error, RemoteAuthFailed):
    """No credentials, or the server refused them (wrong key or secret, no permission)."""


class S3NotFound(S3Error, RemoteNotFound):
    """The bucket or the object does not exist."""


class S3NoSpace(S3Error, RemoteNoSpace):
    """The server has no room left for the object."""


class S3LinkLost(S3Error, RemoteLinkLost):
    """The connection dropped or stopped answering in the middle of a transfer, and the
    retries did not bring it back."""


class S3VerifyFailed(S3Error, RemoteVerifyFailed):
    """What the server stored is not what was sent (size, MD5, SHA-256)."""


class S3ObjectChanged(S3Error):
    """The object was replaced while it was read (its ETag or size is not the one it was
    opened with): nothing of the new object was returned."""


class S3Replaced(S3Error):
    """Another writer wrote the same key while this one uploaded it: the server refused
    to replace the other's object (a conditional write), or the object at the key after
    the upload is not this writer's.  Exit 6, as for a name another run holds."""
    default_errno = _errno.EBUSY
    status = EXIT_LOCKED
    outcome_said = True


class S3Locked(S3Error):
    """An object under object lock (retention) cannot be removed yet."""
    default_errno = _errno.EPERM


AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
              "TokenRefreshRequired", "AllAccessDisabled", "InvalidSecurity", "Forbidden", "403"}
SPACE_CODES = {"XMinioStorageFull", "InsufficientStorage", "StorageFull", "QuotaExceeded", "507"}
# (ConditionalRequestConflict: AWS's 409 for two conditional writes at once, to be retried)
TRANSIENT_CODES = {"ConditionalRequestConflict",
                   "RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "BadDigest",
                   "RequestTimeTooSkewed", "Throttling", "500", "502", "503", "504"}


def _looks_full(text: str) -> bool:
    t = text.lower()
    return any(w in t for w in ("no space", "not enough space", "disk full", "storage full", "no free",
                                "no writable volumes", "insufficient storage", "quota"))


def code_of(exc) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of a botocore ClientError."""
    r = getattr(exc, "response", None) or {}
    e = r.get("Error", {}) or {}
    status = (r.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0
    return str(e.get("Code", "") or status), status, str(e.get("Message", "") or "")


def is_transient(exc) -> bool:
    """Worth trying again: the link, a timeout, a server error, a part that arrived damaged."""
    import botocore.exceptions as be
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectionClosedError, be.ReadTimeoutError,
                        be.ConnectTimeoutError, be.ResponseStreamingError, be.IncompleteReadError,
                        ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ in ("ProtocolError", "ReadTimeoutError", "IncompleteRead", "NewConnectionError"):
        return True
    if isinstance(exc, be.ClientError):
        code, status, msg = code_of(exc)
        return (code in TRANSIENT_CODES or status >= 500) and not _looks_full(msg) and code not in SPACE_CODES
    return False


def translate(exc: BaseException, doing: str, where: str, endpoint: str = "") -> S3Error:
    """The S3Error that says what ``exc`` (raised while ``doing`` ``where``) means."""
    if isinstance(exc, S3Error):
        return exc
    import botocore.exceptions as be
    at = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, be.NoCredentialsError):
        return S3AuthFailed(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                            f"or put them in ~/.aws/credentials (or the file msconfig set s3.credentials names)")
    if isinstance(exc, (be.ProfileNotFound, be.PartialCredentialsError)):
        return S3ConfigError(f"S3 settings for {where}: {exc}")
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError)) or \
            type(exc).__name__ == "NewConnectionError":
        return S3ConnectFailed(f"cannot connect to the S3 endpoint{at} while {doing} {where}: {exc}")
    if isinstance(exc, be.SSLError):
        return S3ConnectFailed(f"TLS to the S3 endpoint{at} failed while {doing} {where}: {exc}")
    if isinstance(exc, be.ClientError):
        code, status, msg = code_of(exc)
        err = _refused(code, status, msg, doing, where, at)
        # what the server answered, apart from the names in the message: a caller that
        # must tell one refusal from another looks at these, never at str(err)
        err.code, err.server_message = code, msg
        return err
    if is_transient(exc):
        return S3LinkLost(f"connection to the S3 endpoint{at} lost while {doing} {where} ({exc}), and the "
                          f"retries did not bring it back; the object is not complete")
    return S3Error(f"S3 {doing} {where} failed{at}: {type(exc).__name__}: {exc}")


def _refused(code: str, status: int, msg: str, doing: str, where: str, at: str) -> S3Error:
    """The S3Error for an error the server answered (a ClientError)."""
    detail = f"{code}{': ' + msg if msg and msg != code else ''}"
    if code in AUTH_CODES or status == 403:
        return S3AuthFailed(f"the S3 server{at} refused the credentials while {doing} {where} ({detail}): "
                            f"check the access key and secret (AWS_ACCESS_KEY_ID, ~/.aws/credentials, "
                            f"s3.profile) and their permissions on the bucket")
    if code == "NoSuchBucket":
        return S3NotFound(f"bucket of {where} does not exist{at}: create it first (or check the name)")
    if code in ("NoSuchKey", "404", "NotFound"):
        return S3NotFound(f"{where} does not exist{at}")
    if code == "NoSuchUpload":
        lost = S3LinkLost(f"the server forgot the upload of {where} ({detail}); the archive is incomplete")
        lost.outcome_said = True
        return lost
    if code in SPACE_CODES or _looks_full(msg):
        return S3NoSpace(f"the S3 server{at} has no space left while {doing} {where} ({detail}): the object "
                         f"was not completed; free space there or choose another bucket")
    return S3Error(f"S3 {doing} {where} failed{at}: {detail}")
