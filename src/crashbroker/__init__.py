"""crashbroker: a session-bus crash feed built on systemd-coredump and KCrash metadata."""

__version__ = "0.1.0"
