"""Bacula module: the mail store as bpipe "files", one per backup group and partition
(or per user), with full and incremental levels and partial restores.

``imsbacula fileset`` writes the FileSet and Job resources for bacula-dir.conf; the
bpipe plugin then runs ``imsbacula backup`` (which streams ``imsbackup -f -``) and
``imsbacula restore`` (which feeds ``imsrestore -f -``) on the file daemon.  See
docs/bacula.md.
"""
