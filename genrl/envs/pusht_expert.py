"""A scripted expert for gym-pusht's PushT: push primitives chosen by a one-push lookahead.

No demonstrations ship with gym-pusht, so this expert makes them. Each plan is one push:
  1. candidates: contact points every `contact_spacing` px along the T's outline, each pushed
     along its inward normal (and +-25 degrees), for a few push lengths and speeds;
  2. each candidate is simulated in a private copy of the env's own physics (pymunk) from the
     current state, the agent placed just outside the contact point;
  3. the candidate that most reduces the pose error (the mean distance of the T's corners from
     their goal positions) wins;
  4. the agent goes to the contact point around the block (never through it), then pushes.
The plan is re-made after every push. Quasi-static pushing makes this work: the env's space
has damping 0, so the block stops as soon as contact ends and a simulated push predicts the
real one exactly (up to the agent's approach, which may brush the block).

The expert is deliberately imperfect: it is greedy (one push ahead), so it can stall, and
pushes are crisp but not optimal. Its success rate and coverage are measured, not assumed
(benchmarks/policy_bc.py reports them).
"""

from __future__ import annotations

import numpy as np
import pymunk
from gym_pusht.envs.pusht import PushTEnv

from genrl.errors import ConfigError

AGENT_RADIUS = 15.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _wrap(angle: float) -> float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


# The T's outline in the block's local frame. The observed block position is the body's origin
# (the middle of the bar's long edge), and the goal is the same T at GOAL_POSE.
T_OUTLINE = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], dtype=float)


def outline_world(block_pose: np.ndarray) -> np.ndarray:
    """The T's outline in world coordinates for block pose (x, y, angle)."""
    return block_pose[:2] + _rotate(T_OUTLINE, block_pose[2])


GOAL_OUTLINE = outline_world(GOAL_POSE)


def pose_error(block_pose: np.ndarray) -> float:
    """Mean distance (px) of the T's eight corners from where they are on the goal: one number
    for position and angle, with rotation weighted by each corner's lever arm."""
    return float(np.linalg.norm(outline_world(block_pose) - GOAL_OUTLINE, axis=1).mean())


def contact_candidates(block_pose: np.ndarray, spacing: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(point on the outline, outward unit normal) every `spacing` px along the outline."""
    corners = outline_world(block_pose)
    candidates = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        edge = b - a
        length = np.linalg.norm(edge)
        # T_OUTLINE runs counter-clockwise (and rotations keep that), so the outward normal is
        # the edge direction turned clockwise; this holds on the concave edges under the bar too.
        normal = np.array([edge[1], -edge[0]]) / length
        count = max(1, int(length // spacing))
        for k in range(count):
            candidates.append((a + edge * (k + 0.5) / count, normal))
    return candidates


class PushTExpert:
    """Reads the agent and block state from the (unwrapped) PushT env, like any scripted expert."""

    def __init__(self, env, rng: np.random.Generator, noise: float = 0.0, contact_spacing: float = 20.0,
                 approach_speed: float = 30.0, settle_steps: int = 3, push_lengths=(2, 4, 6), push_speeds=(3.0, 6.0, 14.0)):
        if not isinstance(env.unwrapped, PushTEnv):
            raise ConfigError(f"the pusht_pusher expert needs gym-pusht's PushT env, not {env.spec.id!r}")
        self.env = env.unwrapped
        self.rng, self.noise = rng, noise
        self.contact_spacing = contact_spacing
        self.approach_speed, self.settle_steps = approach_speed, settle_steps
        self.push_lengths, self.push_speeds = push_lengths, push_speeds
        self.sim = PushTEnv(obs_type="state")  # private physics for the lookahead
        self.sim.reset(seed=0)
        self.plan: list[np.ndarray] = []

    def reset(self) -> None:
        self.plan = []

    # ------------------------------------------------------------------ lookahead
    def _simulate(self, state: np.ndarray, start: np.ndarray, targets: list[np.ndarray]) -> list[np.ndarray]:
        """Block poses (x, y, angle) after each target, the agent placed at `start` tracking `targets`."""
        sim = self.sim
        sim.agent.position = start.tolist()
        sim.agent.velocity = (0.0, 0.0)
        sim.block.position = state[2:4].tolist()
        sim.block.angle = state[4]
        sim.block.velocity, sim.block.angular_velocity = (0.0, 0.0), 0.0
        substeps = int(1 / (sim.dt * sim.control_hz))
        poses = []
        for target in targets:
            for _ in range(substeps):  # the env's own PD control and physics step
                acceleration = sim.k_p * (pymunk.Vec2d(*target) - sim.agent.position) + sim.k_v * (-sim.agent.velocity)
                sim.agent.velocity += acceleration * sim.dt
                sim.space.step(sim.dt)
            poses.append(np.array([*sim.block.position, sim.block.angle]))
        return poses

    def _best_push(self, state: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """The push (start point, targets) whose simulated end pose is closest to the goal."""
        block_pose = state[2:5]
        best, best_error = None, pose_error(block_pose) - 0.5  # a push must gain something to be worth it
        longest = max(self.push_lengths)
        for point, normal in contact_candidates(block_pose, self.contact_spacing):
            start = point + normal * (AGENT_RADIUS + 4.0)
            if not (20 < start[0] < 492 and 20 < start[1] < 492):
                continue  # cannot stand outside the walls
            for turn in (-0.45, 0.0, 0.45):
                direction = -_rotate(normal[None], turn)[0]
                for speed in self.push_speeds:
                    targets = [start + direction * speed * (k + 1) for k in range(longest)]
                    poses = self._simulate(state, start, targets)
                    for length in self.push_lengths:  # shorter pushes are prefixes of the longest
                        error = pose_error(poses[length - 1])
                        if error < best_error:
                            best, best_error = (start, targets[:length]), error
        return best

    # ------------------------------------------------------------------ acting
    def _approach(self, agent: np.ndarray, block_pose: np.ndarray, start: np.ndarray) -> list[np.ndarray]:
        """Targets from the agent to `start` that go around the block, not through it."""
        centre = block_pose[:2] + _rotate(np.array([[0.0, 45.0]]), block_pose[2])[0]  # the T's centre of gravity
        safe_radius = 85.0 + AGENT_RADIUS  # every point of the T is within 77 px of its CoG
        waypoints = []
        position = agent
        if np.linalg.norm(agent - centre) < safe_radius or _segment_hits_block(agent, start, block_pose):
            # Out to the safe circle, around it to the contact's side, then in.
            from_angle = np.arctan2(*(agent - centre)[::-1])
            to_angle = np.arctan2(*(start - centre)[::-1])
            sweep = _wrap(to_angle - from_angle)
            steps = max(1, int(abs(sweep) / 0.5))
            for k in range(steps + 1):
                angle = from_angle + sweep * k / steps
                waypoints.append(centre + safe_radius * np.array([np.cos(angle), np.sin(angle)]))
        waypoints.append(start)
        targets = []
        for waypoint in waypoints:
            waypoint = np.clip(waypoint, 20.0, 492.0)
            distance = np.linalg.norm(waypoint - position)
            count = max(1, int(np.ceil(distance / self.approach_speed)))
            targets += [position + (waypoint - position) * (k + 1) / count for k in range(count)]
            position = waypoint
        # The PD-tracked agent lags its target; the lookahead assumed it rests at `start`.
        return targets + [start] * self.settle_steps

    def act(self) -> np.ndarray:
        env = self.env
        observation = np.array([*env.agent.position, *env.block.position, env.block.angle])
        if not self.plan:
            push = self._best_push(observation)
            if push is None:  # no push helps: a random nudge, so the expert does not freeze
                push = (observation[:2], [observation[:2] + self.rng.uniform(-30, 30, size=2)])
            start, targets = push
            self.plan = self._approach(observation[:2], observation[2:5], start) + targets
        action = self.plan.pop(0)
        if self.noise > 0:
            action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, 0.0, 512.0).astype(np.float32)


def _segment_hits_block(a: np.ndarray, b: np.ndarray, block_pose: np.ndarray) -> bool:
    """Whether the agent moving from a to b would touch the block (sampled along the segment)."""
    from shapely.geometry import LineString, Polygon

    return LineString([a, b]).distance(Polygon(outline_world(block_pose))) < AGENT_RADIUS + 2.0
