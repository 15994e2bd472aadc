"""The restore engine: archive reader -> planner (UIDs, duplicates, chains, links) -> store.

Rules (docs/operations.md explains them for administrators):

* Folder absent: created with the archive's UIDVALIDITY; messages keep their UIDs,
  flags, keywords and dates; UIDNEXT is set to the archive's at the end of the folder
  (not before, so a killed restore run again still keeps the UIDs).
* Folder present: its lock is held while the folder is restored and the user's
  deliveries are held for the whole run.  Messages already there (same bytes) are
  skipped; the others keep their archived UID when the folder has the archive's
  UIDVALIDITY and the UID is at or above its UIDNEXT, else take new UIDs.
* Chain: a journal records, per folder, the archive last restored into it and the
  UIDNEXT it left.  When the folder is unchanged since (same UIDVALIDITY and UIDNEXT)
  a newer archive continues the chain: messages not in its UID list are expunged and
  flags are set as recorded, so full + incrementals give the state of the last one.
  An older archive, or an incremental whose listed-but-not-carried messages are not in
  the folder (a missing link), is refused for that folder (:class:`ChainOrderError`),
  which is left as it was while the other folders go on.
* Single copy: a link member becomes a hard link to the restored first copy.  When
  the first copy is outside the selection, a seekable archive is read there; a stream
  keeps first copies that may be needed in a bounded spool; what still cannot be had
  goes to a reference file that ``imsrestore -r`` completes.

Modules: :mod:`.selection` (paths, map file), :mod:`.journal` (the chain journal),
:mod:`.plan` (per-folder mode and chain decisions), :mod:`.apply` (writing messages,
links, the spool), :mod:`.reffile` (-R/-r reference files), :mod:`.engine` (the main
loop).  The names below are the package's interface.
"""
from asm.restore.apply import Applier
from asm.restore.engine import Restorer
from asm.restore.errors import ArchiveReadFailed, ChainOrderError, RestoreError, StopRestore
from asm.restore.journal import Journal, JournalRow
from asm.restore.options import RestoreOptions, RestoreResult
from asm.restore.plan import FolderPlan, Planner, chain_end
from asm.restore.reffile import complete_references, default_reffile, read_reffile, write_reffile
from asm.restore.selection import Selection, read_map

__all__ = [
    "Applier", "ArchiveReadFailed", "ChainOrderError", "FolderPlan", "Journal", "JournalRow",
    "Planner", "RestoreError", "RestoreOptions", "RestoreResult", "Restorer", "Selection",
    "StopRestore", "chain_end", "complete_references", "default_reffile", "read_map", "read_reffile",
    "write_reffile",
]
