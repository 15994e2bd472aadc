"""Trying a request again: the link, a timeout, a server error or a part that arrived
damaged is tried ``s3.retries`` more times, waiting 0.5, 1, 2, 4 ... s (at most 10 s);
anything else (credentials, a missing bucket, a full disk) fails at once."""
from __future__ import annotations

import time

from plugins.s3.errors import S3ConnectFailed, S3LinkLost, is_transient, translate


def call(settings, doing: str, where: str, fn, *args, midway: bool = False, **kwargs):
    """``fn(*args, **kwargs)`` tried again as the module says.  ``midway``: a request of
    a transfer the server already took part of; an endpoint that no longer answers is
    then the link lost (exit 14), not one never reached (10)."""
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt >= settings.retries or not is_transient(exc):
                err = translate(exc, doing, where, settings.endpoint_shown())
                if midway and type(err) is S3ConnectFailed:
                    err = S3LinkLost(f"the connection to the S3 endpoint was lost in the middle of the transfer "
                                     f"({err}), and the retries did not bring it back; the object is not complete")
                raise err from None
            time.sleep(min(10.0, 0.5 * (2 ** attempt)))
            attempt += 1
