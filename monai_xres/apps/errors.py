"""The error of a request that cannot be carried out as asked (arguments, files, configs).

Raised before any expensive work; the command line prints its message as one line and exits with status 2.
It is a ``ValueError``, so library callers can catch it as the rest of the package's input errors.
"""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A problem with what the user asked for, named with its fix in one sentence."""
