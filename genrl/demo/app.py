"""The gradio page of `genrl demo`: two tabs over DemoBackend (genrl/demo/backend.py).

- Images: pick one or more models (base, fine-tuned, distilled: shown side by side from the same noise),
  a prompt, the sampler, steps, guidance scale and seed; every sample is shown large with its rewards.
- Policies: pick a policy and a seed, run an episode, see the rollout video, success and the latency
  per chunk. For PointMaze policies, click points on the maze to draw a sketch and run the episode
  steered toward it (ITPS), with the path drawn over the sketch.

Errors are shown as one line in the page's status box (never a traceback): a missing model directory,
an empty prompt, a sampler the model cannot use, a sketch point inside a wall.
"""

# no `from __future__ import annotations`: gradio reads the gr.SelectData annotation of on_click as a class
import functools

from genrl.demo.backend import STEERING_METHODS, DemoBackend
from genrl.errors import GenrlError

SAMPLER_CHOICES = ["model's own", "ddim", "ddpm", "flow_sde", "piflow", "consistency", "onedp"]


def _shown_errors(num_outputs: int):
    """Decorate a page callback with `num_outputs` outputs, the last the status line: a GenrlError
    becomes that line instead of a traceback, and the other outputs keep their values."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args):
            import gradio as gr

            try:
                return function(*args)
            except GenrlError as error:
                return (*[gr.skip()] * (num_outputs - 1), f"**Error:** {error}")

        return wrapper

    return decorate


def build_demo(backend: DemoBackend):
    import gradio as gr

    config = backend.config
    with gr.Blocks(title="genrl demo") as demo:
        gr.Markdown("# genrl demo\nSample the image models side by side; run, time and steer the policies.")
        with gr.Tab("Images", visible=bool(config.image_models)):
            names = backend.image_model_names()
            with gr.Row():
                models = gr.CheckboxGroup(names, value=names[:2], label="models (side by side)", elem_id="image-models")
                prompt = gr.Textbox("a red circle at the center", label="prompt", elem_id="prompt")
            with gr.Row():
                sampler_kind = gr.Dropdown(SAMPLER_CHOICES, value="model's own", label="sampler", elem_id="sampler-kind")
                steps = gr.Slider(1, 100, value=20, step=1, label="steps (a student: its calls, 1-4)", elem_id="steps")
                use_default_steps = gr.Checkbox(True, label="each model's own steps", elem_id="default-steps")
                guidance = gr.Number(1.0, label="guidance scale (1 = off)", elem_id="guidance-scale")
                seed = gr.Number(0, precision=0, label="seed", elem_id="image-seed")
                count = gr.Slider(1, config.max_samples, value=min(4, config.max_samples), step=1, label="samples per model")
            notes = [f"- **{entry.name}**: {entry.notes}" for entry in config.image_models if entry.notes]
            if notes:
                gr.Markdown("\n".join(["How the models were made:", *notes]))
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="samples", columns=4, height="auto", object_fit="contain", elem_id="samples")
            image_status = gr.Markdown(elem_id="image-status")

            @_shown_errors(2)
            def on_generate(models, prompt, sampler_kind, steps, use_default_steps, guidance, seed, count):
                kind = None if sampler_kind == "model's own" else sampler_kind
                samples = backend.sample(list(models or []), prompt or "", int(seed or 0), int(count), kind=kind,
                                         num_steps=None if use_default_steps else int(steps),
                                         guidance_scale=1.0 if guidance is None else float(guidance))
                return [(s.image, s.caption) for s in samples], f"{len(samples)} samples, seed {int(seed or 0)}"

            generate.click(on_generate, [models, prompt, sampler_kind, steps, use_default_steps, guidance, seed, count],
                           [gallery, image_status])

        with gr.Tab("Policies", visible=bool(config.policies)):
            policy_names = backend.policy_names()
            sketch = gr.State([])
            with gr.Row():
                policy = gr.Dropdown(policy_names, value=policy_names[0] if policy_names else None, label="policy",
                                     elem_id="policy")
                episode_seed = gr.Number(0, precision=0, label="episode seed", elem_id="episode-seed")
                method = gr.Dropdown(STEERING_METHODS, value="guided", label="steering (with a sketch)", elem_id="steering")
                scale = gr.Number(1000.0, label="steering scale", elem_id="steering-scale")
            with gr.Row():
                run = gr.Button("Run episode", variant="primary", elem_id="run-episode")
                clear = gr.Button("Clear sketch", elem_id="clear-sketch")
            with gr.Row():
                maze = gr.Image(label="PointMaze: click to draw a sketch (black: ball, green: goal)", type="pil",
                                interactive=False, elem_id="maze", height=480)
                video = gr.Video(label="rollout", elem_id="rollout-video", height=480)
                steered = gr.Image(label="steered rollout (dashed: your sketch, black: the ball's path)", type="filepath",
                                   elem_id="steered-picture", height=480)
            episode_status = gr.Markdown(elem_id="episode-status")

            @_shown_errors(3)
            def on_policy_change(name, seed):
                picture = backend.maze_picture(name, int(seed or 0), []) if name and backend.is_maze(name) else None
                return picture, [], ""

            @_shown_errors(3)
            def on_click(name, seed, points, event: gr.SelectData):
                if not backend.is_maze(name):
                    return gr.skip(), points, f"{name} is not a PointMaze policy: there is no maze to sketch on"
                points = [*points, backend.click_to_point(name, tuple(event.index))]
                return backend.maze_picture(name, int(seed or 0), points), points, f"sketch: {len(points)} points"

            @_shown_errors(3)
            def on_run(name, seed, points, method, scale):
                result = backend.run_episode(name, int(seed or 0), points or None, method, 1000.0 if scale is None else float(scale))
                video_path = str(result.video) if result.video else None
                picture_path = str(result.picture) if result.picture else None
                return video_path, picture_path, result.text

            for trigger in (policy.change, episode_seed.change, clear.click):
                trigger(on_policy_change, [policy, episode_seed], [maze, sketch, episode_status])
            maze.select(on_click, [policy, episode_seed, sketch], [maze, sketch, episode_status])
            run.click(on_run, [policy, episode_seed, sketch, method, scale], [video, steered, episode_status])
            demo.load(on_policy_change, [policy, episode_seed], [maze, sketch, episode_status])
    return demo


def launch(backend: DemoBackend):
    """Start the page on config.host:config.port in a background thread; returns (the gradio Blocks, its URL)."""
    import gradio as gr

    config = backend.config
    demo = build_demo(backend)
    demo.queue(default_concurrency_limit=1)  # one job at a time: the models are shared
    _, url, _ = demo.launch(server_name=config.host, server_port=config.port or None, share=False, prevent_thread_lock=True,
                            allowed_paths=[str(backend.output_dir.resolve())], show_error=False, theme=gr.themes.Default())
    return demo, url
