"""ftfsearch: text search over remote-sensing scenes (fast-then-fine)."""

__version__ = "0.1.0"
