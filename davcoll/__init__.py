"""davcoll: a WebDAV server for Arvados-style collections."""

__version__ = "0.1.0"
