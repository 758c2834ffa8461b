"""Errors a user can fix. The command line prints their message in one line, no traceback."""


class PrclError(Exception):
    """Base class: the message names the file or key at fault and says what to do."""


class ConfigError(PrclError, ValueError):
    """A config file or override that cannot be used."""


class DataError(PrclError, ValueError):
    """A dataset, split list, image or mask that cannot be used."""


class CheckpointError(PrclError, ValueError):
    """A weights or checkpoint file that does not fit what was asked of it."""
