"""Errors raised by every registry backend, so callers never see a backend's own exceptions."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every registry error."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached (server down, directory missing); retry later."""


class LeaseNotFound(RegistryError):
    """The lease expired or was revoked; grant a new one."""


class RegistryConfigError(RegistryError, ValueError):
    """A registry URL or TLS setting is malformed; the message names the offending part."""
