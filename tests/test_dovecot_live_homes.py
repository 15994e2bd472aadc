"""The live partial restores of tests/test_dovecot_live_layouts.py (the same tests, the
same clients and checks) on the layouts whose userdb home lies apart from the mail:
``nhash`` (``maildir:STORE/%2.256Nu/%u``, home ``HOME/%u``) and ``home``
(``maildir:~/Maildir``, a passwd-file userdb).  A file of their own so that xdist
(--dist loadfile) runs them beside the other two layouts, not after them.
"""
from __future__ import annotations

import tests.test_dovecot_live_layouts as live
from tests.dovecot_lab import lab_fixture

LAYOUTS = ["nhash", "home"]
lab = lab_fixture(params=LAYOUTS)

# collected here, with this module's lab
test_partial_restores_into_the_served_store_while_clients_idle_poll_and_append = \
    live.test_partial_restores_into_the_served_store_while_clients_idle_poll_and_append
test_a_keyword_the_restore_adds_is_read_by_a_session_that_has_the_folder_open = \
    live.test_a_keyword_the_restore_adds_is_read_by_a_session_that_has_the_folder_open
