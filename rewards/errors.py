"""The project's error classes, which the CLI turns into a one-line message and an exit code.

They live here, below both packages, because `genrl` imports `rewards` (the trainers score
samples) and rewards raise these errors: `rewards` must not import `genrl`. `genrl.errors`
re-exports them, so `from genrl.errors import ConfigError` names the same class.

Anything raised as a `GenrlError` is the user's to fix (a config key, a path, a reward that
misbehaves), so the CLI prints `error: <message>` without a traceback and exits with
`exit_code`.
"""


class GenrlError(Exception):
    """A failure with a message written for the user."""

    exit_code = 1


class ConfigError(GenrlError):
    """Bad usage: unknown key, wrong type, impossible value, bad command line."""

    exit_code = 2


class CheckpointError(GenrlError):
    """A model or run directory that is missing, incomplete or corrupt."""

    exit_code = 2


class RewardError(GenrlError):
    """A reward function returned something unusable (NaN/inf, wrong shape)."""

    exit_code = 1
