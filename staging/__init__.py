"""The staging area: per-group dumps written in parallel to files that any backup engine
can save, with a catalog of what is where, space planning, cleanup and restore lookup.

``imsstage`` (:mod:`staging.cli`) is the command; docs/staging.md is the manual.
"""
