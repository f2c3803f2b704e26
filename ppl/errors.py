"""Errors raised at the boundary between a user's model and the library."""


class ModelError(ValueError):
    """A model cannot be run as given: bad data shapes, missing arguments, bad sites.

    The message always names the site (or argument) involved and what would fit.
    """
