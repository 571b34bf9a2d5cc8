"""Scripted experts that make demonstrations (`genrl collect`), by name.

An expert is built from the env (it may read the true simulator state through
`env.unwrapped`), a numpy Generator and its keyword arguments; `reset()` starts an episode
and `act()` returns the next env action.
"""

from __future__ import annotations

import numpy as np

from genrl.errors import ConfigError


def make_expert(name: str, env, rng: np.random.Generator, **kwargs):
    if name == "pointmaze_planner":
        from genrl.envs.pointmaze_expert import PointMazeExpert as expert_class
    elif name == "pusht_pusher":
        from genrl.envs.pusht_expert import PushTExpert as expert_class
    else:
        raise ConfigError(f"collect.expert {name!r} is unknown; choose 'pointmaze_planner' or 'pusht_pusher'")
    try:
        return expert_class(env, rng, **kwargs)
    except TypeError as error:
        raise ConfigError(f"collect.expert_kwargs for {name!r}: {error}") from None
