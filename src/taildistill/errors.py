"""Errors that the command line reports as one clear line with a non-zero exit."""


class TaildistillError(Exception):
    """A user-facing error: bad input, bad config, missing file. No traceback is shown for it."""


class ConfigError(TaildistillError):
    """A config key is unknown, mistyped or out of range."""


class DataError(TaildistillError):
    """A data file is missing, corrupt or inconsistent."""


class TrainingError(TaildistillError):
    """Training cannot continue (non-finite loss, incompatible checkpoint, ...)."""
