"""User-facing errors: one line that names the problem and the fix."""


class GenloomError(Exception):
    """An error caused by bad input (file, flag, data). The CLI prints it as one line and exits 2."""


class DataError(GenloomError):
    """A dataset file is missing, malformed or fails its checksum."""


class ModelFileError(GenloomError):
    """A model file is not a valid genloom safetensors export."""


class ConfigError(GenloomError, ValueError):
    """An option value is invalid (a flag, a ``genloom.train`` keyword, a config field)."""
