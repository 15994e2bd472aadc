"""The constants of docs/format.md, each defined once: the format's name and versions,
block and record sizes, reserved member names, record keys, and the range of every
value a reader accepts.  Writer, reader and the rest of the project import them from
here."""

FORMAT = "ims-asm"
VERSION = 2                     # what ArchiveWriter writes
READABLE_VERSIONS = (1, 2)      # what ArchiveReader reads

BLOCK = 512                     # every header is one block; data is padded to blocks
ZERO_BLOCK = bytes(BLOCK)
DEFAULT_BLOCKING_FACTOR = 20
MAX_BLOCKING_FACTOR = 4096      # records of at most 2 MiB; the one range -b accepts everywhere

HEADER_NAME = "ims-asm.header"
TRAILER_NAME = "ims-asm.trailer"
RESERVED_NAMES = frozenset((HEADER_NAME, TRAILER_NAME))

# -- record keys ------------------------------------------------------------------------
#
# Records are written under GNU tar's xattr namespace so that `tar tvf` lists an archive
# without a warning per record (it ignores SCHILY.xattr.* silently, and `tar --xattrs
# -xf` carries them as user.imsasm.* extended attributes).  Readers see them as
# IMSASM.<name>, and accept that spelling on the wire too.
WIRE_PREFIX = "SCHILY.xattr.user.imsasm."
LOGICAL_PREFIX = "IMSASM."

KIND = "IMSASM.kind"
VERSION_KEY = "IMSASM.version"      # header member only (version 2)
PARTITION = "IMSASM.partition"
USER = "IMSASM.user"
GROUP = "IMSASM.group"
FOLDER = "IMSASM.folder"
UIDVALIDITY = "IMSASM.uidvalidity"
UIDNEXT = "IMSASM.uidnext"
SUBSCRIBED = "IMSASM.subscribed"
UIDS = "IMSASM.uids"
COUNT = "IMSASM.count"
STATE = "IMSASM.state"
STATE_IDS = "IMSASM.state_ids"        # identities of the UIDs IMSASM.state names, optional
STATE_POP3 = "IMSASM.state_pop3"      # POP3 UIDLs and orders of the UIDs IMSASM.state names, optional
UID = "IMSASM.uid"
FLAGS = "IMSASM.flags"
KEYWORDS = "IMSASM.keywords"
INTERNALDATE = "IMSASM.internaldate"
STORED = "IMSASM.stored"
NLINK = "IMSASM.nlink"
SHA256 = "IMSASM.sha256"
GUID = "IMSASM.guid"                # the store's GUID of a message (Dovecot's X-GUID), optional
BASENAME = "IMSASM.basename"        # a Maildir message's file base name (POP3 UIDL %f), optional
POP3_UIDL = "IMSASM.pop3_uidl"      # the message's own POP3 UIDL (dovecot-uidlist P), optional
POP3_ORDER = "IMSASM.pop3_order"    # its POP3 order number (dovecot-uidlist O), optional
MAILBOX_GUID = "IMSASM.mailbox_guid"  # a folder's mailbox GUID (dovecot-uidlist G), optional
ACL = "IMSASM.acl"                  # a folder's access control list (Dovecot's dovecot-acl), optional
ACL_MAX_BYTES = 65536               # IMSASM.acl: at most this many bytes (UTF-8) ...
ACL_MAX_LINES = 1000                # ... and lines (a pax header holds at most 4,096 records' lines)
SUBSCRIPTIONS = "IMSASM.subscriptions"  # a user's subscribed names that are no folder, optional
SUBSCRIPTIONS_MAX = 10000           # IMSASM.subscriptions: at most this many names
DIGEST = "IMSASM.digest"            # version 2: the member's record digest, its last record


def wire(key):
    """The on-the-wire spelling of a record key: IMSASM.uid -> SCHILY.xattr.user.imsasm.uid."""
    return WIRE_PREFIX + key[len(LOGICAL_PREFIX):]


# member kinds (IMSASM.kind)
K_HEADER, K_TRAILER = "header", "trailer"
K_USER, K_FOLDER, K_MESSAGE, K_LINK = "user", "folder", "message", "link"

# -- value ranges -----------------------------------------------------------------------
UID_MIN, UID_MAX = 1, 2 ** 32 - 1           # RFC 3501: nz-number, 32 bits
UIDVALIDITY_MIN, UIDVALIDITY_MAX = 1, 2 ** 32 - 1
UIDNEXT_MIN, UIDNEXT_MAX = 1, 2 ** 32       # one past the highest UID
COUNT_MAX = UID_MAX
NLINK_MIN, NLINK_MAX = 1, 2 ** 32 - 1
POP3_ORDER_MIN, POP3_ORDER_MAX = 1, 2 ** 32 - 1
SIZE_MAX = 2 ** 63 - 1                      # a member's data size
TIME_MIN = -62135596800                     # 0001-01-01 00:00:00 UTC: the first date Python
                                            # and IMAP carry (an mbox From_ line of 1800)
TIME_MAX = 253402300799                     # 9999-12-31 23:59:59 UTC: still a calendar date
MAX_PAX = 64 << 20                          # largest extended header accepted
MAX_JSON = 64 << 20                         # largest header or trailer member accepted
MAX_WORD = 1000                             # longest flag or keyword
SYSTEM_FLAGS = frozenset(("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"))
