"""The ``s3://bucket/key`` archive device: written as a streaming multipart upload
(:mod:`plugins.s3.upload`), read through ranged GETs, seekable (:mod:`plugins.s3.download`)."""
from __future__ import annotations

from asm.devices import Device
from plugins.s3.download import S3Reader
from plugins.s3.settings import Settings, client
from plugins.s3.spec import parse
from plugins.s3.upload import S3Writer, lock_path


class S3WriteDevice(Device):
    puts_in_place = True          # (the object appears when its upload is completed)

    def prepare(self) -> None:
        self.file.prepare()

    def close(self, ok: bool = True) -> None:
        if ok:
            self.file.close()
        else:
            self.file.abort()


class S3ReadDevice(Device):
    def close(self, ok: bool = True) -> None:
        self.file.close()


def open_device(spec: str, mode: str, config=None) -> Device:
    s = parse(spec)
    settings = Settings.from_config(config)
    s3 = client(settings)
    if mode == "wb":
        dev = S3WriteDevice(spec, S3Writer(s3, settings, s), seekable=False, kind="s3")
        # the installation's lock file for this object: imsbackup holds it while it writes,
        # so a second run of the installation to the same key is refused (exit 6)
        dev.lock_path = lock_path(settings, s)
        return dev
    return S3ReadDevice(spec, S3Reader(s3, settings, s), seekable=True, kind="s3")
