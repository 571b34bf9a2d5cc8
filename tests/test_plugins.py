"""genrl from the outside: a reward in the user's own module (`reward.name: module:function`),
and the Shapes models as plain diffusers pipelines."""

import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrl.errors import ConfigError, RewardError
from rewards import check_reward_config, compute_configured_reward, compute_reward, get_reward

# ------------------------------------------------------------------ rewards from the user's module
USER_MODULE = "genrl_test_user_rewards"
USER_REWARDS = '''
import numpy as np
import torch

from rewards import RewardOutput

THRESHOLD = 0.5


def brightness(images, prompts):
    """A bare (B,) tensor."""
    return images.mean(dim=(1, 2, 3))


def word_count(images, prompts):
    """A numpy array."""
    return np.array([len(prompt.split()) for prompt in prompts])


def with_info(images, prompts, scale=1.0):
    """The project's RewardOutput, with a keyword argument from the config."""
    scores = scale * images[:, 0].mean(dim=(1, 2))
    return RewardOutput(scores=scores, info={"doubled": 2 * scores})


def one_nan(images, prompts):
    scores = torch.zeros(images.shape[0])
    scores[1] = float("nan")
    return scores


def wrong_shape(images, prompts):
    return torch.zeros(images.shape[0], 2)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / f"{USER_MODULE}.py").write_text(textwrap.dedent(USER_REWARDS))
    monkeypatch.syspath_prepend(str(package))
    yield USER_MODULE
    sys.modules.pop(USER_MODULE, None)


def _images():
    images = torch.linspace(-1, 1, 3)[:, None, None, None].expand(3, 3, 4, 4).clone()  # sample i is flat at -1, 0, 1
    return images, ["a red circle", "a", "a blue square at the top"]


def test_reward_named_module_colon_function_is_imported_and_checked(user_module):
    images, prompts = _images()
    output = compute_reward(f"{user_module}:brightness", images, prompts)
    torch.testing.assert_close(output.scores, torch.tensor([-1.0, 0.0, 1.0]))
    assert output.scores.dtype == torch.float32 and output.pixel_map is None and output.info == {}

    output = compute_reward(f"{user_module}:word_count", images, prompts)
    torch.testing.assert_close(output.scores, torch.tensor([3.0, 1.0, 6.0]))

    output = compute_reward(f"{user_module}:with_info", images, prompts, scale=3.0)
    torch.testing.assert_close(output.scores, torch.tensor([-3.0, 0.0, 3.0]))
    torch.testing.assert_close(output.info["doubled"], torch.tensor([-6.0, 0.0, 6.0]))


def test_user_reward_in_a_weighted_reward_config(user_module):
    images, prompts = _images()
    config = SimpleNamespace(name=None, kwargs={}, components=[
        SimpleNamespace(name=f"{user_module}:brightness", weight=2.0, kwargs={}),
        SimpleNamespace(name=f"{user_module}:word_count", weight=0.5, kwargs={}),
    ])
    check_reward_config(config)
    output = compute_configured_reward(config, images, prompts)
    torch.testing.assert_close(output.scores, torch.tensor([-2.0 + 1.5, 0.5, 2.0 + 3.0]))
    torch.testing.assert_close(output.info[f"{user_module}:word_count"], torch.tensor([3.0, 1.0, 6.0]))


@pytest.mark.parametrize("name,culprit", [
    ("no_such_module_xyz:score", "no_such_module_xyz"),
    ("no_such_package_xyz.rewards:score", "no_such_package_xyz.rewards"),
    ("{module}:no_such_function", "no_such_function"),
    ("{module}:THRESHOLD", "THRESHOLD"),
    ("{module}:", "module:function"),
    (":brightness", "module:function"),
])
def test_bad_module_reward_names_are_one_line_config_errors(user_module, name, culprit):
    with pytest.raises(ConfigError) as error:
        get_reward(name.format(module=user_module))
    message = str(error.value)
    assert culprit in message and "\n" not in message


def test_a_dependency_missing_inside_the_users_module_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "genrl_test_needs_dependency.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        get_reward("genrl_test_needs_dependency:score")


@pytest.mark.parametrize("function,message", [("one_nan", r"non-finite.*\[1\]"), ("wrong_shape", r"shape \(3, 2\)")])
def test_misbehaving_user_reward_is_named(user_module, function, message):
    images, prompts = _images()
    with pytest.raises(RewardError, match=rf"'{user_module}:{function}'.*{message}"):
        compute_reward(f"{user_module}:{function}", images, prompts)


def test_an_unregistered_name_without_a_colon_points_to_module_function():
    with pytest.raises(ConfigError, match="'jpeg_compresibility' is not registered.*'module:function'"):
        get_reward("jpeg_compresibility")


# ------------------------------------------------------------------ Shapes models as diffusers pipelines
PROMPTS = ["a red circle at the top left", "a blue square at the center and a yellow triangle at the bottom right"]


def _pipeline(name):
    from diffusers import DiffusionPipeline

    import genrl  # noqa: F401  (registers ShapesPipeline with diffusers)

    pipe = DiffusionPipeline.from_pretrained(f"models/{name}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _genrl_images(name, sampler, generator, guidance_scale=1.0):
    """What genrl's own loader and sampler make of the same directory."""
    from genrl.models.loading import load_model

    model = load_model(f"models/{name}").eval()
    trajectory = sampler.sample(model.denoiser, model.encode_prompts(PROMPTS), (len(PROMPTS), *model.sample_shape),
                                generator=generator, guidance_scale=guidance_scale,
                                null_condition=model.null_condition(len(PROMPTS)) if guidance_scale != 1.0 else None)
    return model.decode(trajectory.sample)


@pytest.mark.parametrize("name", ["shapes-diffusion", "shapes-flow"])
def test_shipped_shapes_models_load_and_run_as_diffusers_pipelines(name):
    from PIL import Image

    from genrl.models.shapes_pipeline import ShapesPipeline

    pipe = _pipeline(name)
    assert isinstance(pipe, ShapesPipeline)
    pil = pipe(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert [(type(image), image.size) for image in pil] == [(Image.Image, (32, 32))] * 2
    array = pipe(PROMPTS[0], num_inference_steps=2, num_images_per_prompt=2, output_type="np").images
    assert array.shape == (2, 32, 32, 3) and 0 <= array.min() and array.max() <= 1
    tensor = pipe(PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert tensor.shape == (2, 3, 32, 32) and 0 <= tensor.min() and tensor.max() <= 1
    assert tensor.std() > 0.05  # an image, not a constant
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in pil]),
                                  (tensor.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))


def test_pipeline_samples_what_genrls_samplers_sample():
    from diffusers import DDIMScheduler

    from genrl.samplers import DDIMSampler, DDPMSampler, FlowSDESampler

    def run(pipe, seed, **kwargs):
        return pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), output_type="pt",
                    **kwargs).images * 2 - 1

    pipe = _pipeline("shapes-diffusion")
    # The saved scheduler (DDPM, ancestral): the same noise draws, step by step.
    ours = _genrl_images("shapes-diffusion", DDPMSampler(1000, 3), torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(pipe, 1), ours, atol=1e-4, rtol=0)
    # DDIM eta 0 with classifier-free guidance, genrl's evaluation sampler.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False, steps_offset=1)
    ours = _genrl_images("shapes-diffusion", DDIMSampler(1000, 3, eta=0.0), torch.Generator().manual_seed(2), 2.0)
    torch.testing.assert_close(run(pipe, 2, guidance_scale=2.0), ours, atol=1e-4, rtol=0)

    flow = _pipeline("shapes-flow")
    ours = _genrl_images("shapes-flow", FlowSDESampler(3, noise_level=0.0), torch.Generator().manual_seed(3))
    torch.testing.assert_close(run(flow, 3), ours, atol=1e-4, rtol=0)


def test_saved_models_load_both_ways_and_old_directories_still_load(tmp_path):
    from diffusers import DiffusionPipeline

    from genrl.models.loading import load_model
    from genrl.models.prompt_diffusion_model import PromptDiffusionModel

    shipped = load_model("models/shapes-diffusion").eval()
    shipped.save_pretrained(tmp_path / "genrl_saved")  # what a run writes to model/
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "genrl_saved")
    pipe.save_pretrained(tmp_path / "pipeline_saved")
    # A directory from before ShapesPipeline: model_index names PromptDiffusionModel and the network kind.
    old = tmp_path / "old"
    old.mkdir()
    for component in ("unet", "text_encoder", "tokenizer", "scheduler"):
        (old / component).symlink_to((tmp_path / "genrl_saved" / component).resolve())
    (old / "model_index.json").write_text('{"_class_name": "PromptDiffusionModel", "network_kind": "unet2d_condition"}')

    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        expected = shipped.denoiser.model_output(x, t, shipped.encode_prompts(PROMPTS))
        for directory in ("genrl_saved", "pipeline_saved", "old"):
            model = load_model(tmp_path / directory).eval()
            assert isinstance(model, PromptDiffusionModel)
            torch.testing.assert_close(model.denoiser.model_output(x, t, model.encode_prompts(PROMPTS)), expected)
