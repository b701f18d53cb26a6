"""User-facing errors: one line naming the file, key or value, and what to do."""


class CrossmodalError(Exception):
    """A problem with the user's input (file, config key, value). The CLI prints it as one line and exits 2."""


class DataError(CrossmodalError):
    """A raw source or prepared HDF5 file is missing, malformed or does not match the schema."""


class ConfigError(CrossmodalError):
    """A config key is unknown, has the wrong type, or has an invalid value."""
