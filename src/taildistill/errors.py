"""Errors that the command line reports as one clear line with a non-zero exit."""


class TaildistillError(Exception):
    """A user-facing error: bad input, bad config, missing file. No traceback is shown for it."""


class ConfigError(TaildistillError):
    """A config key is unknown, mistyped or out of range."""


class RegistryError(ConfigError, TypeError, ValueError):
    """A registration refused (a name taken twice, an object of the wrong kind): a user's module that
    registers it gets one line naming its own file and line, not a traceback."""


class DataError(TaildistillError):
    """A data file is missing, corrupt or inconsistent."""


class TrainingError(TaildistillError):
    """Training cannot continue (non-finite loss, incompatible checkpoint, ...)."""


class Interrupted(TaildistillError):
    """A run stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, where: str, run_dir):
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.run_dir = run_dir
        super().__init__(f"stopped by {self.signal_name} at {where}; the checkpoint is written: continue with "
                         f"`taildistill train --resume {run_dir}`")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal
