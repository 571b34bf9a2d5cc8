"""`genrl distill CONFIG` (configs/distill/): turn a multi-step teacher into a few-step student.

The run layer is pretraining's (`fit` in genrl/pretraining/loop.py: AdamW, cosine schedule, EMA,
checkpoints, resume, metrics.jsonl); the method (distill/<method>.py) supplies the loss of a batch,
what to update after each optimizer step, and the constants the student samples with. The student
starts as a copy of the teacher, is saved with `save_pretrained` in `output_dir/model` (a policy keeps
the teacher's normaliser and env) and is measured at the end with `eval.num_steps` calls: success
over seeded episodes for a policy, prompt match for an image model.
"""

from __future__ import annotations

import copy

from accelerate import Accelerator
from accelerate.utils import set_seed

from distill.consistency import ConsistencyDistiller
from distill.onedp import OneDPDistiller
from distill.piflow import PiFlowDistiller
from genrl.config import DemonstrationData, DistillConfig, SamplerConfig
from genrl.errors import ConfigError
from genrl.models.loading import load_model
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.pretraining.data import load_data, make_batches
from genrl.pretraining.loop import TrainedModules, fit, save_and_evaluate
from genrl.run_dir import prepare_output_dir

DISTILLERS = {"consistency": ConsistencyDistiller, "onedp": OneDPDistiller, "piflow": PiFlowDistiller}


def load_teacher(path: str):
    """A Diffusion Policy or a genrl image model directory."""
    from genrl.commands.eval import _class_name

    if _class_name(path) == "DiffusionPolicy":
        return DiffusionPolicy.from_pretrained(path)
    return load_model(path)


def run(config: DistillConfig) -> dict:
    teacher = load_teacher(config.teacher.path)
    is_policy = isinstance(teacher, DiffusionPolicy)
    if is_policy != isinstance(config.data, DemonstrationData):
        wanted = "demonstrations (data.kind: demonstrations, data.path: a dataset of its env)" if is_policy else "shapes"
        raise ConfigError(f"teacher {config.teacher.path} is a {'policy' if is_policy else 'image model'}: data.kind must be {wanted}")
    demos = load_data(config)  # a missing dataset fails before anything is written
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=config.output_dir)
    set_seed(config.seed)
    teacher.to(accelerator.device).eval()
    distiller = DISTILLERS[config.method.kind](config.method, teacher, TrainedModules.of(copy.deepcopy(teacher)))
    student = distiller.make_student(teacher)  # its trainable parameters are the distiller's choice (a head freezes its trunk)
    output_dir = prepare_output_dir(config, accelerator)
    batches = make_batches(config, student, demos, accelerator.device)
    final, log = fit(config, accelerator, student, batches, distiller.loss, output_dir, "distill",
                     after_step=distiller.after_step, checkpointed=distiller.checkpointed())
    if is_policy:
        final.policy_config["distilled"] = distiller.student_constants()
    else:
        final.distilled = distiller.student_constants()
    # the student's own sampler with `eval.num_steps` calls; the figures are pretraining's end-of-run ones
    eval_sampler = None if config.eval.skip else SamplerConfig(kind=config.method.kind, num_steps=config.eval.num_steps)
    return save_and_evaluate(config, accelerator, final, batches, log, output_dir, eval_sampler)
