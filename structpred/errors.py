"""The errors a user gets as one line and exit status 2: a bad configuration value
(:class:`ConfigError`) and a dataset problem (:class:`DataError`).

They live here, below every layer, with no imports: the data loaders, the tracking layer,
the training layer and the command-line apps all raise or catch them without importing one
another (``tests/test_layering.py`` keeps it so).
"""

EXIT_CONFIG = 2   #: exit status of a configuration or data error (README "Robustness")


class ConfigError(ValueError):
    """A bad configuration value; ``str()`` is ``"<key>: <what is wrong>"``."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(ValueError):
    """A dataset problem (missing folder, unreadable or unsuitable image); names the path."""
