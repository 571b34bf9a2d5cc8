"""genrl: make pretrained diffusion and flow models better after pretraining."""

__version__ = "0.1.0"

# Registers ShapesPipeline on diffusers, so that after `import genrl`
# `DiffusionPipeline.from_pretrained("models/shapes-diffusion")` loads a Shapes model.
import genrl.models.shapes_pipeline  # noqa: F401

from genrl.api import fine_tune  # noqa: E402
from genrl.config import TrainConfig, load_config  # noqa: E402

__all__ = ["TrainConfig", "fine_tune", "load_config"]
