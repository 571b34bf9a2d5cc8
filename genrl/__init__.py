"""genrl: make pretrained diffusion and flow models better after pretraining."""

__version__ = "0.1.0"
