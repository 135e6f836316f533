"""ARSM (Yin, Yue & Zhou 2019, "ARSM: Augment-REINFORCE-Swap-Merge estimator for gradient
backpropagation through categorical variables"): an unbiased, loss-value-only estimator for
categorical units that couples the sample with its swapped "pseudo actions"."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import Estimator, LossFn, NoiseLaw, attach_gradient, reduce_to_batch


def swap_permutations(K: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(permutations, pair_index): row 0 of ``permutations`` (P, K) is the identity, then one row
    per pair c < j swapping c and j, P = K (K - 1) / 2 + 1; ``pair_index[c, j]`` (K, K) is the row
    of the swap c <-> j (row 0 when c = j: swapping a category with itself changes nothing)."""
    rows = [list(range(K))]
    pair_index = torch.zeros(K, K, dtype=torch.long)
    for c, j in itertools.combinations(range(K), 2):
        row = list(range(K))
        row[c], row[j] = j, c
        pair_index[c, j] = pair_index[j, c] = len(rows)
        rows.append(row)
    return torch.tensor(rows, device=device), pair_index.to(device)


@register_estimator("arsm", "ARSM (Yin, Yue & Zhou 2019): unbiased, Dirichlet-augmented REINFORCE with the "
                            "K(K-1)/2 swapped pseudo actions as baseline; loss values only")
class ARSM(Estimator):
    """Augment-REINFORCE-swap-merge for independent categorical units with K categories.

    Augment: pi_v ~ Dirichlet(1_K) per unit v, z_v = argmin_k pi_vk exp(-a_vk) ~ Categorical(softmax(a_v)).
    Swap: pi^{c<->j} exchanges entries c and j of every unit's pi, z^{c<->j} the resulting action
    (z^{c<->c} = z). Merge (the paper's multivariate ARSM, Proposition 3 / Algorithm 1):
    g_vc = sum_j f_D(c, j) (1/K - pi_vj), f_D(c, j) = L(z^{c<->j}) - (1/K) sum_m L(z^{m<->j}).
    Unbiased for d E[L] / d a_vc: AR gives E[L(z)(1 - K pi_vc)], swapping c and j (pi's law is
    exchangeable) gives E[L(z^{c<->j})(1 - K pi_vj)], and the subtracted mean has expectation
    (1/K) sum_m dE[L]/da_vm = 0. The loss is evaluated once per distinct pseudo action, all units
    swapped together: K (K - 1) / 2 + 1 evaluations, whatever the number of units. The surrogate's
    value is their mean (each pseudo action is itself a Categorical(softmax(a)) sample).

    Binary units run the K = 2 case with logits (0, a) (2 evaluations). The Dirichlet draws are
    continuous (no exact moments by enumeration).
    """

    family = "score function"
    unbiased = True
    needs_loss_backprop = False
    randomness = "continuous"
    variables = "both"
    loss_rounding = 1.0  # differences of the pseudo actions' losses times (1/K - pi)
    loss_evals = "categories * (categories - 1) // 2 + 1"

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        """Per estimate, for K = ``categories`` (2 for binary units)."""
        return categories * (categories - 1) // 2 + 1

    def noise_laws(self, logits, categorical=False):
        """Gumbels read only through pi = softmax(-G), Dirichlet(1_K); with K = 2 the action and its
        swap change where pi_0 crosses sigm(a_0 - a_1) or sigm(a_1 - a_0) (K > 2: lines across the
        simplex, which the harness refuses)."""
        base = logits if categorical else torch.stack([torch.zeros_like(logits), logits], -1)
        if base.shape[-1] != 2:
            return (NoiseLaw("flat-dirichlet"),)
        gap = base[..., 0] - base[..., 1]
        return (NoiseLaw("flat-dirichlet", breaks=torch.sigmoid(torch.stack([gap, -gap], -1))),)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        if categorical:
            return self.categorical_surrogate(logits, loss_fn)
        two_class = torch.stack([torch.zeros_like(logits), logits], -1)
        return self.categorical_surrogate(two_class, lambda h: loss_fn(h[..., 1]))

    def categorical_surrogate(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        base = logits.detach()
        K = base.shape[-1]
        log_pi = torch.log_softmax(-self.rng.gumbel(base.shape, base), -1)  # exp(-G) ~ Exp(1): Dirichlet(1)
        permutations, pair_index = swap_permutations(K, base.device)
        swapped = log_pi[..., permutations].movedim(-2, 0)  # (P, *batch, units, K)
        actions = F.one_hot((swapped - base).argmin(-1), K).to(base.dtype)
        loss = loss_fn(actions)  # (P, *batch)
        values = loss.detach()[pair_index]  # (K, K, *batch): L(z^{c<->j})
        centred = values - values.mean(0, keepdim=True)
        weight = 1 / K - log_pi.exp()  # (*batch, units, K)
        grad = torch.einsum("cj...,...vj->...vc", centred, weight)
        return attach_gradient(reduce_to_batch(loss, base.ndim - 2), logits, grad, event_dims=2)
