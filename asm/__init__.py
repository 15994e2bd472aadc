"""ims-asm: message store backup and restore, and adapters for backup engines."""
__version__ = "0.1.0"
