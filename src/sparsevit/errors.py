"""User-facing errors: raised for bad input, printed as one line by the CLI."""


class SparseVitError(ValueError):
    """Bad input or an impossible request; the message is shown to the user as is."""
