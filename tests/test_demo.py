"""ims-demo, the README's first command (the main job on the embedded default): it must
end in "RESULT: the restored store is identical to the source" with exit 0, and its
checks must be real -- every verdict line it prints comes from imsverify and from a
byte-for-byte comparison it makes itself."""
from __future__ import annotations

import pytest

from tests.helpers import run


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_the_main_job_backs_up_restores_and_proves_the_store_identical(tmp_path, driver):
    p = run(None, "ims-demo", "--users", "6", "--messages", "240", "--driver", driver,
            "--keep", tmp_path / "work", check=0, text=True)
    out = p.stdout + p.stderr
    lines = [ln.removeprefix("ims-demo: ") for ln in out.splitlines() if ln.startswith("ims-demo: ")]
    verify = [ln for ln in lines if ln.startswith("imsverify")]
    assert len(verify) == 2 and all(ln.endswith("every check passed") for ln in verify), out
    assert "live store: " in verify[0] and "since the backup 0 new, 0 expunged, 0 with other flags" in verify[0]
    assert "exactly as the archives hold them" in verify[1], out
    checked = [ln for ln in lines if ln.startswith("checked ")]
    assert len(checked) == 1, out
    n = int(checked[0].split()[1])
    assert n >= 240 and f"{n} identical" in checked[0] and "all hard-linked again" in checked[0], out
    assert lines[-1] == "RESULT: the restored store is identical to the source", out
