"""Any archive, however damaged or hostile (issue 12): a seeded, bounded fuzzer.

Valid archives made by imsbackup (links, keywords, non-ASCII and non-UTF-8 names, a
message bigger than 1 MiB; a full one and an incremental restored onto the full) are
mutated in every class of tests/archive_fuzz.py, restored into a fresh installation in a
sandbox and listed with -t; most in-process through imsrestore's main() (run_command:
exactly the status and stderr users get), from a file and from a pipe, a sample as real
processes.  Asserted for each: no traceback, no hang, bounded memory, nothing written
outside the installation, no wrong bytes under any UID, no exit 0 with a store that
differs from the source, every damage detected with the status of its kind.

IMS_FUZZ_COUNT (default 150 per driver) and IMS_FUZZ_SEED (default: a new seed, printed
with every failure) change the run; bench/fuzz_archive.py runs it longer.
"""
from __future__ import annotations

import os
import random

import pytest

from tests import archive_fuzz as af
from tests.helpers import DRIVERS

COUNT = int(os.environ.get("IMS_FUZZ_COUNT", "150"))
SEED = int(os.environ.get("IMS_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 30))))
SUBPROCESS_EVERY = 25           # every 25th mutation runs as real processes, through a pipe


@pytest.fixture(scope="module", params=DRIVERS)
def corpus(request, tmp_path_factory):
    return af.build_corpus(str(tmp_path_factory.mktemp(f"corpus-{request.param}")), request.param)


def test_forger_reproduces_the_writers_archives(corpus):
    af.self_test(corpus)


def test_pristine_archives_restore_and_list_cleanly(corpus, tmp_path):
    for source in ("full", "incr"):
        m = af.Mutation("pristine", "", source, corpus.archives[source], {0}, must_fail=False)
        for i, mode in enumerate(("file", "pipe", "subprocess")):
            o = af.check(corpus, m, str(tmp_path), i + (10 if source == "incr" else 0), mode)
            assert not o.problems, (source, mode, o.problems)


def test_every_class_is_generated(corpus):
    got = {m.cls for m in af.mutations(corpus, 3 * len(af.CLASSES), SEED)}
    assert got == set(af.CLASSES)


def test_fuzz_restore_and_listing(corpus, tmp_path):
    outcomes = []
    for n, m in enumerate(af.mutations(corpus, COUNT, SEED + DRIVERS.index(corpus.driver), base=str(tmp_path))):
        mode = "subprocess" if n % SUBPROCESS_EVERY == SUBPROCESS_EVERY - 1 else ("pipe" if n % 2 else "file")
        outcomes.append(af.check(corpus, m, str(tmp_path), n, mode))
    bad = [o for o in outcomes if o.problems]
    counts = af.summary(outcomes)
    assert len(outcomes) == COUNT and set(counts) == set(af.CLASSES)
    assert not bad, (f"IMS_FUZZ_SEED={SEED} driver={corpus.driver}: {len(bad)} of {len(outcomes)} mutations "
                     "broke a property:\n" + "\n".join(
                         f"  [{o.mutation.cls}] {o.mutation.what} ({o.mode}, {o.mutation.source}): "
                         + "; ".join(o.problems) for o in bad[:15]))
