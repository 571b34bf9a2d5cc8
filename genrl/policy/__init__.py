"""Action policies: Diffusion Policy, its normalisation, configs, demonstrations, BC and evaluation."""
