"""Errors a user can fix. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, option, model name); the message says the fix."""
