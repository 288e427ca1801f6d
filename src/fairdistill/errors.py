"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""
from typing import Iterable


class UserError(Exception):
    """A problem with the user's input (path, name, data row, model capability), not a bug."""


class CapabilityError(UserError):
    """The chosen backend cannot do what a benchmark or method needs (e.g. log-likelihoods, chat)."""


def reject_unknown_options(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """One line naming every unknown option of ``what`` and the known ones."""
    known = sorted(known)
    bad = sorted(set(given) - set(known))
    if bad:
        raise UserError(f"unknown {what} option(s) {', '.join(bad)}; known: {', '.join(known)}")
