"""Errors that the CLI turns into a one-line message and an exit code.

The classes are defined in `rewards/errors.py` (rewards raise them and must not import
genrl, which imports rewards); this is where the rest of genrl imports them from.
Exit codes: 2 for `ConfigError` and `CheckpointError` (usage), 1 for the others.
"""

from rewards.errors import CheckpointError, ConfigError, GenrlError, RewardError

__all__ = ["CheckpointError", "ConfigError", "GenrlError", "RewardError"]
