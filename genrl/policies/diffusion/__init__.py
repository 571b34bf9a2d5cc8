"""Diffusion Policy (Chi et al.): configuration, model, normaliser."""

from genrl.policies.diffusion.configuration_diffusion import DiffusionPolicyConfig
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.policies.diffusion.normalizer import FieldNormalizer, Normalizer

__all__ = ["DiffusionPolicy", "DiffusionPolicyConfig", "FieldNormalizer", "Normalizer"]
