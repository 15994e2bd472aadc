"""Command-line front ends: one module per command.  Nothing below asm.cli parses argv."""
