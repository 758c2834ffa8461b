"""Errors a user can fix. The command line prints their message in one line, no traceback."""


class PrclError(Exception):
    """Base class: the message names the file or key at fault and says what to do."""


class ConfigError(PrclError, ValueError):
    """A config file or override that cannot be used."""


class DataError(PrclError, ValueError):
    """A dataset, split list, image or mask that cannot be used."""


class CheckpointError(PrclError, ValueError):
    """A weights or checkpoint file that does not fit what was asked of it."""


class ExportError(PrclError, RuntimeError):
    """A network that cannot be exported as asked, or whose export does not match it."""


class MissingExtraError(PrclError, ImportError):
    """An optional dependency (``pip install 'prcl[<extra>]'``) that is not installed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
