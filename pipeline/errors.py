"""User-facing errors: one clear line, no traceback."""


class UserError(Exception):
    """A mistake in the user's input or config. The CLI prints it as one line and exits 2."""
