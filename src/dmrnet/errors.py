"""Error types. Every error dmrnet raises for bad input or configuration is a
:class:`DMRNetError` (a ValueError) whose message names the offending thing and the fix."""


class DMRNetError(ValueError):
    """Base class of dmrnet's user-facing errors."""


class ConfigError(DMRNetError):
    """A method, model or training setting that cannot be used."""
