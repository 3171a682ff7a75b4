"""Errors raised while resolving, reading or validating a model."""


class ModelLoadError(ValueError):
    """A model could not be loaded: bad path, corrupt weights, or an unsupported architecture.

    The message always names the offending file or field so a user can act on it.
    """
