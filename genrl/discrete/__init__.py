"""Discrete diffusion over token sequences: the log-linear forward process (noise.py), MDLM with masking
noise (mdlm.py) and UDLM with uniform noise (udlm.py). Their guidance lives in genrl/guidance/discrete.py."""
