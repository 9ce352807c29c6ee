"""The data errors (no imports, so that every data module can raise them)."""


class DataError(ValueError):
    """A dataset problem (missing folder, unreadable or unsuitable image); names the path."""
