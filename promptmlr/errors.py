"""Errors that describe bad input rather than a bug; the CLI prints them as one line.

Each subclasses ``ValueError``; more specific ones live beside the code that raises them
(``DatasetError``, ``DescriptionsError``, ``PromptsFileError``, ``BackboneLoadError``).
"""


class ConfigError(ValueError):
    """An option, config key or value that is unknown or out of range; the message names it and the fix."""
