"""Operational commands: install, cleanup, doctor (imperative shells over pure decisions)."""
