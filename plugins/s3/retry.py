"""Trying a request again: the link, a timeout, a server error or a part that arrived
damaged is tried ``s3.retries`` more times, waiting 0.5, 1, 2, 4 ... s (at most 10 s);
anything else (credentials, a missing bucket, a full disk) fails at once."""
from __future__ import annotations

import time

from plugins.s3.errors import is_transient, translate


def call(settings, doing: str, where: str, fn, *args, **kwargs):
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt >= settings.retries or not is_transient(exc):
                raise translate(exc, doing, where, settings.endpoint_shown()) from None
            time.sleep(min(10.0, 0.5 * (2 ** attempt)))
            attempt += 1
