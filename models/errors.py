"""Errors of the model side: a model that cannot be loaded, a sequence that cannot be run."""


class ModelLoadError(ValueError):
    """A model could not be loaded: bad path, corrupt weights, or an unsupported architecture.

    The message always names the offending file or field so a user can act on it.
    """


class SequenceError(Exception):
    """An exception tied to one sequence of a batch (`seq`: the row it was raised for), so that it
    fails that sequence only and the rest of the batch can be run again without it."""

    def __init__(self, seq, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.seq = seq
        self.cause = cause
