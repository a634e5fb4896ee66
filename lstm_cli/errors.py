"""Errors the core raises; the CLI turns each into one `Error: ...` line and exit code 1 (2 for UsageError)."""


class LstmCliError(Exception):
    """A failure the user can fix; the message says what, where, and how."""


class DataError(LstmCliError):
    """Unreadable, malformed or unsuitable input data."""


class ArtifactError(LstmCliError):
    """A model directory that is missing, incomplete, tampered with or of an unknown format."""


class UsageError(LstmCliError):
    """An option lstm-cli refuses to act on once it looks at the disk (exit 2, like a bad option)."""
