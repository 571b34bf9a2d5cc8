"""How well the first-order D-CBG scores track the exact ones, on the shipped Shapes-token classifiers.

    .venv/bin/python benchmarks/dcbg_first_order.py

For 16 clean Shapes token grids (seed 3) masked (MDLM) or uniformly noised (UDLM) at t in {0.95, 0.7, 0.4}:
the mean per-token spread (max - min over the K candidate tokens) of the exact scores log p(y | x_t with
token l := v) and of their first-order estimate, their correlation over guided tokens, and the
classifier's mean log p(y | x_t). Results: benchmarks/results/dcbg_first_order.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genrl.discrete.data import TokenShapesBatches
from genrl.discrete.model import DiscreteModel
from genrl.discrete.training import corrupt
from genrl.guidance.discrete import cbg_scores_exact, cbg_scores_first_order

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    clean, labels = TokenShapesBatches(8, 16, 0.0).clean(np.random.default_rng(3), 16)
    lines = ["# First-order vs exact D-CBG scores (shipped Shapes-token classifiers)", "",
             "Made by `benchmarks/dcbg_first_order.py`. Spread: mean over guided tokens of max - min over the candidate "
             "tokens (how strongly guidance can reweight a token); corr: correlation of first-order and exact scores.", "",
             "| noise | t | guided tokens | exact spread | first-order spread | corr | mean log p(y \\| x_t) |", "|---|---|---|---|---|---|---|"]
    for noise in ("mdlm", "udlm"):
        classifier = DiscreteModel.from_pretrained(ROOT / "models" / f"discrete-shapes-cbg-{noise}")
        for t_value in (0.95, 0.7, 0.4):
            t = torch.full((len(clean),), t_value)
            noisy = corrupt(classifier, clean, t, torch.Generator().manual_seed(0))
            exact = cbg_scores_exact(classifier, noisy, t, labels, classifier.num_tokens)
            first = cbg_scores_first_order(classifier, noisy, t, labels, classifier.num_tokens)
            guided = noisy == classifier.mask_index if noise == "mdlm" else torch.ones_like(noisy, dtype=torch.bool)
            spread = lambda s: (s.max(-1).values - s.min(-1).values)[guided].mean().item()  # noqa: E731
            corr = np.corrcoef(first[guided].flatten().numpy(), exact[guided].flatten().numpy())[0, 1]
            log_p = first.gather(-1, noisy.unsqueeze(-1)).squeeze(-1)[guided].mean().item()  # unchanged token: exact value
            lines.append(f"| {noise} | {t_value} | {guided.float().mean():.2f} | {spread(exact):.3f} | {spread(first):.3f} | "
                         f"{corr:.2f} | {log_p:.2f} |")
            print(lines[-1], flush=True)
    (ROOT / "benchmarks" / "results" / "dcbg_first_order.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
