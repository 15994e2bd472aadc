"""Unfinished multipart uploads are journalled in ``$IMS_HOME/data/s3-uploads/`` while
they run (one small JSON file each).  A run killed outright (SIGKILL, a crash, a power
cut) cannot abort its upload, so the next S3 write of the installation aborts the
uploads whose process on this host is gone: their parts stop taking space.  (A bucket
lifecycle rule AbortIncompleteMultipartUpload does the same on the server's side.)"""
from __future__ import annotations

import json
import os
import socket
import time

from asm.locks import pid_alive


def _dir(home: str | None) -> str | None:
    return os.path.join(home, "data", "s3-uploads") if home else None


def record(home: str | None, endpoint: str, bucket: str, key: str, upload_id: str) -> str | None:
    d = _dir(home)
    if d is None:
        return None
    try:
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{os.getpid()}-{abs(hash(upload_id)) & 0xFFFFFFFF:08x}.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"endpoint": endpoint, "bucket": bucket, "key": key, "upload_id": upload_id,
                       "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        os.replace(tmp, path)
        return path
    except OSError:
        return None          # the journal helps a later run; its lack never fails this one


def forget(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def stale(home: str | None, endpoint: str) -> list[tuple[str, dict]]:
    """(journal file, entry) of this host's uploads to ``endpoint`` whose process is gone."""
    d = _dir(home)
    out = []
    if d is None or not os.path.isdir(d):
        return out
    host = socket.gethostname()
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(d, name)
        try:
            with open(path, encoding="utf-8") as f:
                e = json.load(f)
        except (OSError, ValueError):
            continue
        if e.get("host") == host and e.get("endpoint") == endpoint and not pid_alive(int(e.get("pid", 0))):
            out.append((path, e))
    return out
