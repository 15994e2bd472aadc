"""imsverify's library: prove that archives restore.

* :mod:`.archive` reads one archive as a restore would (every check of format.md §4)
  and keeps what it holds;
* :mod:`.chain` checks that archives form one unbroken chain and builds what it restores to;
* :mod:`.compare` compares that with a store: the scratch store of a test restore, or
  the live store;
* :mod:`.scratch` runs the test restore into a scratch installation;
* :func:`verdict` picks the exit status when several problems meet.
"""
from asm.errors import (EXIT_DIFFERS, EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE, EXIT_OK, EXIT_ORDER,
                        EXIT_PARTIAL)
from asm.verify.archive import ArchiveCheck, FolderRec, Problem, check_archive
from asm.verify.chain import ChainView, build
from asm.verify.compare import Comparison, compare_live, compare_restored

#: Most severe first: what the archive is (hostile, damaged, not one), then the chain.
#: Then any other status (a test restore the scratch store could not take: 13, 17, ...),
#: then the comparisons (19, whose differences such a failure explains), then what the
#: backup itself reported (1).
SEVERITY = (EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE, EXIT_ORDER)
LAST = (EXIT_DIFFERS, EXIT_PARTIAL)


def verdict(problems: list[Problem]) -> int:
    """The one exit status for all ``problems`` (EXIT_OK for none)."""
    statuses = {p.status for p in problems}
    for s in SEVERITY:
        if s in statuses:
            return s
    others = statuses - set(LAST)
    if others:
        return min(others)
    for s in LAST:
        if s in statuses:
            return s
    return EXIT_OK


__all__ = ["ArchiveCheck", "ChainView", "Comparison", "FolderRec", "Problem", "SEVERITY", "build",
           "check_archive", "compare_live", "compare_restored", "verdict"]
