"""Discrete diffusion (MDLM, UDLM) and its guidance (D-CFG, D-CBG): formulas against direct computations."""

import json
from types import SimpleNamespace

import pytest
import torch

from genrl.discrete.mdlm import mdlm_loss, mdlm_posterior, subs_log_probs
from genrl.discrete.noise import alpha, mask_tokens, uniform_tokens
from genrl.discrete.udlm import udlm_loss, udlm_posterior
from genrl.errors import ConfigError
from genrl.guidance.discrete import (cbg_posterior, cbg_scores_exact, cbg_scores_first_order, cfg_posterior,
                                     cfg_x0_log_probs, check_gamma)

V, L = 4, 3  # real values, sequence length
MASK = V


def _onehot(x, k):
    return torch.nn.functional.one_hot(x, k).double()


def test_forward_noise_keeps_each_token_with_probability_alpha():
    x0 = torch.zeros(20000, 8, dtype=torch.long)
    t = torch.full((20000,), 0.7)
    masked = mask_tokens(x0, t, MASK, torch.Generator().manual_seed(0))
    assert set(masked.unique().tolist()) == {0, MASK}
    assert (masked == 0).float().mean().item() == pytest.approx(alpha(t[:1]).item(), abs=0.01)
    uniform = uniform_tokens(x0, t, V, torch.Generator().manual_seed(0))
    # kept with alpha, else uniform over V values (which can land on 0 again)
    assert (uniform == 0).float().mean().item() == pytest.approx(alpha(t[:1]).item() + (1 - alpha(t[:1]).item()) / V, abs=0.01)


def test_subs_never_predicts_the_mask_and_copies_unmasked_tokens():
    x_t = torch.tensor([[0, MASK, 2]])
    log_probs = subs_log_probs(torch.randn(1, L, V + 1), x_t, MASK)
    assert torch.isinf(log_probs[..., MASK]).all()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, L))
    assert log_probs[0, 0, 0] == 0 and log_probs[0, 2, 2] == 0  # unmasked: probability 1 on the observed token


def test_mdlm_posterior_matches_the_true_posterior_for_a_perfect_model():
    """With x0 known, the MDLM reverse step must equal q(x_s | x_t, x0) computed by Bayes' rule."""
    t, s = torch.tensor([0.8]), torch.tensor([0.5])
    x0, x_t = torch.tensor([[1, 3, 2]]), torch.tensor([[MASK, 3, MASK]])
    posterior = mdlm_posterior(_onehot(x0, V + 1), x_t, t.double(), s.double(), MASK)
    a_t, a_s = alpha(t.double()).item(), alpha(s.double()).item()
    for position in range(L):
        for token in range(V + 1):
            # Bayes: q(x_s | x0) q(x_t | x_s) / q(x_t | x0), with the mask absorbing
            q_s = a_s if token == x0[0, position] else (1 - a_s if token == MASK else 0.0)
            if x_t[0, position] == MASK:
                q_t_given_s = (1 - a_t / a_s) if token != MASK else 1.0
                q_t = 1 - a_t
            else:
                q_t_given_s, q_t = (a_t / a_s if token == x_t[0, position] else 0.0), a_t
            assert posterior[0, position, token].item() == pytest.approx(q_s * q_t_given_s / q_t, abs=1e-9)


def test_mdlm_loss_weights_masked_token_nll_by_the_schedule():
    x0, x_t = torch.tensor([[1, 3, 2]]), torch.tensor([[MASK, 3, MASK]])
    log_probs = subs_log_probs(torch.randn(1, L, V + 1), x_t, MASK)
    t = torch.tensor([0.4])
    expected = (1 - 1e-3) / (1 - alpha(t)) * -(log_probs[0, 0, 1] + log_probs[0, 2, 2])
    assert torch.allclose(mdlm_loss(log_probs, x0, x_t, t, MASK), expected)


def test_udlm_loss_is_the_limit_of_the_reverse_step_kl():
    torch.manual_seed(0)
    x0, x_t = torch.randint(0, V, (3, L)), torch.randint(0, V, (3, L))
    probs = torch.randn(3, L, V).softmax(-1).double()
    t, dt = torch.tensor([0.2, 0.5, 0.9]).double(), 1e-6
    true = udlm_posterior(_onehot(x0, V), x_t, t, t - dt)
    model = udlm_posterior(probs, x_t, t, t - dt)
    kl_rate = (true * (true.log() - model.log())).sum(-1).sum(-1) / dt
    assert torch.allclose(udlm_loss(probs, x0, x_t, t), kl_rate, rtol=1e-4)
    assert torch.allclose(udlm_loss(_onehot(x0, V), x0, x_t, t), torch.zeros(3, dtype=torch.float64), atol=1e-9)


def test_cfg_mixes_log_probabilities_as_the_formula_says():
    torch.manual_seed(1)
    cond, uncond = torch.randn(2, L, V).log_softmax(-1), torch.randn(2, L, V).log_softmax(-1)
    for gamma in (0.0, 1.0, 3.0):
        direct = gamma * cond + (1 - gamma) * uncond
        direct = direct - direct.logsumexp(-1, keepdim=True)
        assert torch.allclose(cfg_x0_log_probs(cond, uncond, gamma), direct, atol=1e-6)
    assert torch.allclose(cfg_x0_log_probs(cond, uncond, 0.0), uncond, atol=1e-6)
    masked = torch.cat([cond, torch.full((2, L, 1), float("-inf"))], -1)
    assert torch.isinf(cfg_x0_log_probs(masked, torch.cat([uncond, torch.full((2, L, 1), float("-inf"))], -1), 2.0)[..., -1]).all()
    posterior_c, posterior_u = cond.exp(), uncond.exp()
    mixed = posterior_c ** 2.0 * posterior_u ** -1.0
    assert torch.allclose(cfg_posterior(posterior_c, posterior_u, 2.0), mixed / mixed.sum(-1, keepdim=True), atol=1e-6)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ConfigError, match="gamma"):
            check_gamma(bad)


class TinyClassifier(torch.nn.Module):
    """Logits from a one-hot sequence through one nonlinear layer: log p(y | x) is not linear in x."""

    def __init__(self, tokens, classes=3):
        super().__init__()
        torch.manual_seed(2)
        self.layer = torch.nn.Linear(L * tokens, 8)
        self.out = torch.nn.Linear(8, classes)

    def forward(self, one_hot, t):
        return self.out(torch.tanh(self.layer(one_hot.flatten(1)) + t[:, None]))


def test_exact_cbg_equals_brute_force_enumeration():
    classifier, k = TinyClassifier(V + 1), V + 1
    x_t, t, y = torch.tensor([[MASK, 1, MASK], [2, MASK, 0]]), torch.tensor([0.7, 0.3]), torch.tensor([2, 0])
    scores = cbg_scores_exact(classifier, x_t, t, y, k, chunk=5)
    for b in range(2):
        for position in range(L):
            for token in range(k):
                changed = x_t[b : b + 1].clone()
                changed[0, position] = token
                logits = classifier(torch.nn.functional.one_hot(changed, k).float(), t[b : b + 1])
                assert scores[b, position, token].item() == pytest.approx(logits.log_softmax(-1)[0, y[b]].item(), abs=1e-5)


def test_first_order_cbg_is_exact_for_the_current_tokens_and_close_for_small_weights():
    classifier, k = TinyClassifier(V + 1), V + 1
    x_t, t, y = torch.tensor([[MASK, 1, MASK]]), torch.tensor([0.5]), torch.tensor([1])
    exact, approx = cbg_scores_exact(classifier, x_t, t, y, k), cbg_scores_first_order(classifier, x_t, t, y, k)
    current = torch.nn.functional.one_hot(x_t, k).bool()
    assert torch.allclose(exact[current], approx[current], atol=1e-6)  # no change, no approximation
    with torch.no_grad():
        classifier.layer.weight.mul_(0.01)  # a nearly linear classifier: the Taylor step is nearly exact
    exact, approx = cbg_scores_exact(classifier, x_t, t, y, k), cbg_scores_first_order(classifier, x_t, t, y, k)
    assert (exact - approx).abs().max() < 1e-3


def test_cbg_at_gamma_zero_is_the_unguided_step_and_mdlm_keeps_unmasked_tokens():
    torch.manual_seed(3)
    x_t = torch.tensor([[MASK, 1, MASK]])
    posterior = mdlm_posterior(torch.cat([torch.randn(1, L, V).softmax(-1), torch.zeros(1, L, 1)], -1), x_t,
                               torch.tensor([0.6]), torch.tensor([0.4]), MASK)
    scores = torch.randn(1, L, V + 1)
    assert torch.allclose(cbg_posterior(posterior, scores, 0.0, x_t, MASK), posterior, atol=1e-6)
    guided = cbg_posterior(posterior, scores, 2.0, x_t, MASK)
    assert torch.equal(guided[0, 1], posterior[0, 1])
    direct = posterior[0, 0] * torch.exp(2.0 * scores[0, 0])
    assert torch.allclose(guided[0, 0], direct / direct.sum(), atol=1e-6)


# ---------------------------------------------------------------- models, `genrl pretrain`, guided sampling
def _tiny(kind, vocab=5, classes=3, length=6, noise=None):
    from genrl.discrete.model import DiscreteModel, TokenTransformer

    torch.manual_seed(4)
    tokens = vocab + (1 if "mdlm" in (kind, noise) else 0)
    if kind == "classifier":
        network = TokenTransformer(tokens, length, classes, 0, hidden=16, layers=1, heads=2, pool=True)
    else:
        network = TokenTransformer(tokens, length, tokens, classes, hidden=16, layers=1, heads=2)
    return DiscreteModel(network, kind, vocab, classes, (length,), noise).eval()


@pytest.mark.parametrize("kind", ["mdlm", "udlm"])
def test_guidance_at_gamma_zero_samples_the_unconditional_model_exactly(kind):
    from genrl.discrete.sampling import DiscreteGuidance, sample_tokens

    model, classifier = _tiny(kind), _tiny("classifier", noise=kind)
    labels = torch.tensor([0, 1, 2, 0])
    unconditional = sample_tokens(model, torch.full_like(labels, 3), 5, torch.Generator().manual_seed(0))
    for guidance in (DiscreteGuidance("cfg", 0.0), DiscreteGuidance("cbg", 0.0, classifier)):
        assert torch.equal(sample_tokens(model, labels, 5, torch.Generator().manual_seed(0), guidance), unconditional)
    conditional = sample_tokens(model, labels, 5, torch.Generator().manual_seed(0))
    assert torch.equal(sample_tokens(model, labels, 5, torch.Generator().manual_seed(0), DiscreteGuidance("cfg", 1.0)), conditional)
    assert conditional.max() < 5 and conditional.min() >= 0  # no mask token left, only real values


def test_cbg_pulls_samples_toward_what_the_classifier_wants():
    """A classifier whose class-0 logit counts token 2: strong D-CBG makes token 2 far more frequent."""
    from genrl.discrete.sampling import DiscreteGuidance, sample_tokens

    model, classifier = _tiny("mdlm"), _tiny("classifier", noise="mdlm")
    with torch.no_grad():
        for p in classifier.network.parameters():
            p.zero_()
    counting = lambda one_hot, t: torch.stack([one_hot[..., 2].sum(1) * 3.0, torch.zeros(len(one_hot)),  # noqa: E731
                                               torch.zeros(len(one_hot))], dim=1)
    classifier.network.forward = lambda tokens, t, class_labels=None: SimpleNamespace(sample=counting(tokens, t))
    labels = torch.zeros(64, dtype=torch.long)
    plain = sample_tokens(model, labels, 6, torch.Generator().manual_seed(1), DiscreteGuidance("cbg", 0.0, classifier))
    guided = sample_tokens(model, labels, 6, torch.Generator().manual_seed(1), DiscreteGuidance("cbg", 3.0, classifier, first_order=False))
    assert (guided == 2).float().mean() > (plain == 2).float().mean() + 0.3


def test_guidance_refuses_a_classifier_for_other_classes_or_noise():
    from genrl.discrete.sampling import DiscreteGuidance, sample_tokens

    model = _tiny("mdlm")
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="classes"):
        sample_tokens(model, labels, 2, guidance=DiscreteGuidance("cbg", 1.0, _tiny("classifier", classes=4, noise="mdlm")))
    with pytest.raises(ConfigError, match="noisy tokens"):
        sample_tokens(model, labels, 2, guidance=DiscreteGuidance("cbg", 1.0, _tiny("classifier", noise="udlm")))
    with pytest.raises(ConfigError, match="gamma"):
        sample_tokens(model, labels, 2, guidance=DiscreteGuidance("cfg", -1.0))


@pytest.mark.parametrize("recipe, model_overrides", [
    ("discrete_sequences_mdlm", ["model.process=mdlm"]), ("discrete_sequences_mdlm", ["model.process=udlm"]),
    ("discrete_sequences_classifier", ["model.noise=mdlm"])], ids=["mdlm", "udlm", "classifier"])
def test_genrl_pretrain_trains_discrete_models_and_they_round_trip(recipe, model_overrides, tmp_path):
    from conftest import run_cli

    from genrl.discrete.model import DiscreteModel
    from genrl.run_dir import read_metrics

    code = run_cli("pretrain", f"configs/pretrain/{recipe}.yaml", f"output_dir={tmp_path}", *model_overrides,
                   "data.length=8", "model.hidden=32", "model.layers=1", "max_steps=60", "log_every=10", "warmup_steps=5",
                   "checkpoint_every=60", "batch_size=32")
    assert code == 0
    losses = [record["loss"] for record in read_metrics(tmp_path / "metrics.jsonl") if "loss" in record]
    assert losses[-1] < 0.9 * losses[0]
    model = DiscreteModel.from_pretrained(tmp_path / "model")
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert ("eval_accuracy_t0" in summary) == (model.kind == "classifier")
    tokens = torch.randint(0, 8, (2, 8))
    t = torch.full((2,), 0.5)
    again = DiscreteModel.from_pretrained(tmp_path / "model")
    inputs = torch.nn.functional.one_hot(tokens, model.num_tokens).float() if model.kind == "classifier" else tokens
    labels = None if model.kind == "classifier" else torch.tensor([0, 4])
    assert torch.equal(model(inputs, t, labels), again(inputs, t, labels))


def test_genrl_eval_samples_a_discrete_model_with_guidance_and_reads_the_class(tmp_path, capsys):
    from conftest import run_cli

    _tiny("mdlm").save_pretrained(tmp_path / "mdlm")
    _tiny("classifier", noise="mdlm").save_pretrained(tmp_path / "cbg")
    _tiny("classifier").save_pretrained(tmp_path / "reader")
    _tiny("classifier", classes=4, noise="mdlm").save_pretrained(tmp_path / "other")
    common = ["rollout.kind=tokens", f"model.path={tmp_path / 'mdlm'}", f"rollout.reader_path={tmp_path / 'reader'}",
              "rollout.samples_per_class=4", "rollout.num_steps=4"]
    for method in ("cfg", "cbg"):
        out = tmp_path / f"eval_{method}"
        code = run_cli("eval", "configs/eval/discrete_shapes.yaml", f"output_dir={out}", *common, f"guidance.method={method}",
                       f"guidance.classifier_path={tmp_path / 'cbg'}", "guidance.gamma=2")
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_samples"] == 12 and 0 <= summary["class_hit"] <= 1
        assert (out / "samples" / "eval.txt").read_text().count("class ") == 12
    capsys.readouterr()
    bad = {"guidance.classifier_path=" + str(tmp_path / "other"): "classes", "guidance.gamma=-2": "gamma",
           "guidance={kind: itps}": "guidance.kind 'itps' steers a rollout.kind 'env'"}
    for override, message in bad.items():
        code = run_cli("eval", "configs/eval/discrete_shapes.yaml", f"output_dir={tmp_path / 'bad'}", *common, "guidance.method=cbg",
                       f"guidance.classifier_path={tmp_path / 'cbg'}", override)
        error = capsys.readouterr().err.strip()
        assert code != 0 and message in error and len(error.splitlines()) == 1, error
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("process", ["mdlm", "udlm"])
def test_the_shipped_shapes_models_sample_the_requested_position_under_guidance(process):
    from genrl.discrete.model import DiscreteModel
    from genrl.discrete.sampling import DiscreteGuidance, classify, sample_tokens

    model = DiscreteModel.from_pretrained(f"models/discrete-shapes-{process}")
    reader = DiscreteModel.from_pretrained("models/discrete-shapes-reader")
    labels = torch.arange(model.num_classes).repeat_interleave(4)
    hit = {}
    for gamma in (0.0, 1.0):
        tokens = sample_tokens(model, labels, 16, torch.Generator().manual_seed(0), DiscreteGuidance("cfg", gamma))
        hit[gamma] = (classify(reader, tokens) == labels).float().mean().item()
    assert hit[1.0] >= 0.9 and hit[0.0] <= 0.4, hit  # the unconditional model hits a position by chance (1/9)
