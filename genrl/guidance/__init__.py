"""Guidance: steer a pretrained model at sampling time, without retraining it.

- ITPS (itps.py): six samplers that steer a frozen Diffusion Policy toward a user's point or sketch
  (sketch.py), scored by alignment.py; `genrl eval` runs them with a `guidance:` section
  (configs/eval/itps_pointmaze_medium.yaml).
- Discrete guidance (discrete.py): D-CFG and D-CBG (exact and first-order) on the reverse steps of the
  MDLM and UDLM models of genrl/discrete/.
"""

from genrl.guidance.alignment import PointMassDynamics, SketchFollower, path_alignment, sketch_cost
from genrl.guidance.itps import METHODS, Steering, steer
from genrl.guidance.sketch import check_in_free_space, densify, detour_sketch

__all__ = ["METHODS", "PointMassDynamics", "SketchFollower", "Steering", "check_in_free_space", "densify", "detour_sketch",
           "path_alignment", "sketch_cost", "steer"]
