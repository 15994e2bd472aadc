"""A test plugin (loaded through an ``ims_asm`` entry point the test writes): it plays
another writer of the same S3 key at a chosen moment of an imsbackup's upload, which no
real race hits on purpose.  ``IMS_TEST_S3_OTHER_WRITER=completing`` writes the other
object just before this run completes its own (a server with conditional writes must
refuse this run's); ``completed`` just after (the check after the upload must find it).
The other object is ``OTHER`` with the writer token ``other-host:1:0``.  Only the moment
is simulated: the upload, the conditions and the check are plugins/s3's own code."""
from __future__ import annotations

import os

from plugins.s3 import upload

OTHER = b"another writer's archive\n" * 100
TOKEN = "other-host:1:0"


def _other(writer, stage):
    if stage == os.environ.get("IMS_TEST_S3_OTHER_WRITER"):
        writer.s3.put_object(Bucket=writer.spec.bucket, Key=writer.spec.key, Body=OTHER,
                             Metadata={upload.WRITER: TOKEN})


upload.test_hook = _other
