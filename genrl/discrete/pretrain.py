"""`genrl pretrain` for the discrete domains: a denoiser (MDLM / UDLM) or a token classifier, trained by
the shared `fit` loop, saved to output_dir/model, and scored on fresh held-out data at the end:
a denoiser by its NELBO in nats per token, a classifier by its accuracy (on clean tokens, and for a
noisy-token classifier also at t = 0.5)."""

from __future__ import annotations

import json

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from genrl.discrete.data import MarkovSequenceBatches, TokenShapesBatches
from genrl.discrete.model import DiscreteModel, TokenTransformer
from genrl.discrete.training import classifier_loss, corrupt, denoiser_loss
from genrl.run_dir import prepare_output_dir

HELD_OUT = 512
EVAL_SEED = 10_000  # held-out batches come from their own seeds, never from training's


def make_token_batches(data, batch_size: int, classifier: bool):
    dropout = 0.0 if classifier else data.condition_dropout  # a classifier learns the real labels only
    if data.kind == "token_shapes":
        return TokenShapesBatches(data.grid, batch_size, dropout)
    return MarkovSequenceBatches(data.length, data.vocab_size, data.num_classes, data.world_seed, batch_size, dropout)


def build_discrete_model(config, batches) -> DiscreteModel:
    spec = config.model
    length = batches.shape[0]
    if spec.kind == "discrete_diffusion":
        tokens = batches.vocab_size + (1 if spec.process == "mdlm" else 0)
        network = TokenTransformer(tokens, length, tokens, batches.num_classes, spec.hidden, spec.layers, spec.heads)
        return DiscreteModel(network, spec.process, batches.vocab_size, batches.num_classes, batches.shape, None, batches.describe())
    noise = None if spec.noise == "none" else spec.noise
    tokens = batches.vocab_size + (1 if noise == "mdlm" else 0)
    network = TokenTransformer(tokens, length, batches.num_classes, 0, spec.hidden, spec.layers, spec.heads, pool=True)
    return DiscreteModel(network, "classifier", batches.vocab_size, batches.num_classes, batches.shape, noise, batches.describe())


@torch.no_grad()
def held_out_figures(model: DiscreteModel, batches, seed: int) -> dict:
    rng = np.random.default_rng([EVAL_SEED, seed])
    clean, labels = batches.clean(rng, HELD_OUT)
    generator = torch.Generator().manual_seed(seed)
    if model.kind == "classifier":
        figures = {}
        for t_value in ((0.0, 0.5) if model.noise else (0.0,)):
            t = torch.full((HELD_OUT,), t_value)
            noisy = corrupt(model, clean, t, generator)
            predicted = model(torch.nn.functional.one_hot(noisy, model.num_tokens).float(), t).argmax(-1)
            figures[f"eval_accuracy_t{t_value:g}"] = float((predicted == labels).float().mean())
        return figures
    loss = denoiser_loss(model)
    nelbo = [float(loss(lambda x, t, c: model(x, t, c["class_labels"]), clean[i : i + 128],
                        {"class_labels": labels[i : i + 128]}, generator)) for i in range(0, HELD_OUT, 128)]
    return {"eval_nelbo_per_token": float(np.mean(nelbo))}


def pretrain_discrete(config) -> dict:
    from genrl.pretraining.loop import fit  # the shared loop; imported here to keep the package import light

    accelerator = Accelerator(log_with="tensorboard", project_dir=config.output_dir)
    set_seed(config.seed)
    classifier = config.model.kind == "token_classifier"
    batches = make_token_batches(config.data, config.batch_size, classifier)
    model = build_discrete_model(config, batches)
    output_dir = prepare_output_dir(config, accelerator)
    model.to(accelerator.device)
    step_loss = classifier_loss(model) if classifier else denoiser_loss(model)
    final, log = fit(config, accelerator, model, batches, step_loss, output_dir, "pretrain")
    summary = {}
    if accelerator.is_main_process:
        final = final.cpu()
        final.save_pretrained(output_dir / "model")
        summary = {"model": str(output_dir / "model"), **batches.describe(), **held_out_figures(final, batches, config.seed)}
        log.write({"step": config.max_steps, **{k: v for k, v in summary.items() if k.startswith("eval_")}})
        (output_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary
