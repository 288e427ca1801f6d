"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A problem with the user's input (path, name, data row, model capability), not a bug."""


class CapabilityError(UserError):
    """The chosen backend cannot do what a benchmark or method needs (e.g. log-likelihoods, chat)."""
