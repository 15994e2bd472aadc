"""NetBackup module: bpstart_notify / bpend_notify scripts that stage per-group dumps
for a Standard policy whose backup selection is the staging directory, an installer
that prints the policy setup, and restore lookup that prints the bprestore command.
See docs/staging.md."""
