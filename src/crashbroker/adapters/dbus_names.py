"""Every D-Bus name of crashbroker's contract, in one place."""

from __future__ import annotations

BUS_NAME = "org.kde.crashbroker1"
OBJECT_PATH = "/org/kde/crashbroker1"
MANAGER_INTERFACE = "org.kde.crashbroker1.Manager"
ERROR_PREFIX = "org.kde.crashbroker1.Error."

SIGNAL_DETECTED = "CrashDetected"
SIGNAL_UPDATED = "CrashUpdated"
SIGNAL_REMOVED = "CrashRemoved"


def error_name(suffix: str) -> str:
    """``org.kde.crashbroker1.Error.<suffix>``."""
    return ERROR_PREFIX + suffix


# The launcher subscriber exports one method so that others (the notifier's "Report…" action)
# can ask it to start DrKonqi for a crash.
LAUNCHER_BUS_NAME = "org.kde.crashbroker1.Launcher"
LAUNCHER_OBJECT_PATH = "/org/kde/crashbroker1/Launcher"
LAUNCHER_INTERFACE = "org.kde.crashbroker1.Launcher"
