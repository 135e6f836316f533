"""Advantage estimators of sequence RL, as the frameworks define them (see ``estimators.sequence``).

Each turns the rewards (and lengths) of G responses per prompt into advantages A; the estimate is
sum_i weight_i A_i d log pi(y_i), the weight being the loss aggregation's. With the reward a function
of the response, E[A_i d log pi(y_i)] is the gradient of E[r] exactly when the baseline r_i - A_i
does not depend on response i (Theorem 1 and Corollary 1 of the seed paper, for a sequence as the
unit). Mean-centring (GRPO, Dr. GRPO) includes r_i in the mean, which scales the expected gradient by
exactly (G - 1) / G; dividing by the group's std (GRPO) gives each prompt a ratio that depends on its
success probability (the difficulty bias).
"""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.domains import FLAG, Count, Interval, OneOf
from estimators.sequence import SequenceEstimator, group_mean_std, greedy_tokens, leave_one_out

SCALES = ("group", "batch", "none")
GROUP = Count(2, why="a group baseline from one response leaves no signal")  # G for a group baseline


def _batch_axis_first(x: torch.Tensor) -> torch.Tensor:
    """(G, *batch, P) -> (G * P, *batch): every response of an estimate on axis 0."""
    return x.movedim(-1, 1).flatten(0, 1)


def _centred(rewards: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """rewards - baseline, exactly 0 where they are equal."""
    return torch.where(rewards == baseline, torch.zeros_like(rewards), rewards - baseline)


@register_estimator("seq-reinforce", "REINFORCE on sequences with no baseline: A = r")
class SequenceReinforce(SequenceEstimator):
    """A_i = r_i (Williams 1992; the seed paper's Theorem 1 with the sequence as the unit): unbiased,
    each response on its own."""

    advantage_coupling = "none"
    unbiased_advantage = True

    def advantages(self, rewards, lengths, reference):
        return rewards


@register_estimator("rloo", "RLOO: leave-one-out baseline, A_i = r_i - mean of the other G - 1 rewards (TRL)")
class RLOO(SequenceEstimator):
    """A_i = r_i - sum_{j != i} r_j / (G - 1) = G / (G - 1) (r_i - mean), as TRL's ``rloo_trainer.py``
    and OpenRLHF's 'rloo' compute it: unbiased, the baseline being independent of response i."""

    unbiased_advantage = True
    domains = {"G": GROUP}

    def advantages(self, rewards, lengths, reference):
        mean, _ = group_mean_std(rewards)
        G = rewards.shape[0]
        return _centred(rewards, mean) * (G / (G - 1))


@register_estimator("grpo", "GRPO: A = (r - group mean) / (std + eps), ddof, eps and std scope as parameters")
class GRPO(SequenceEstimator):
    """A_i = (r_i - mean) / (std + eps) over the group (Shao et al. 2024), as TRL's
    ``grpo_trainer.py`` (``scale_rewards`` 'group' | 'batch' | 'none', torch.std so ddof 1, eps 1e-4)
    and verl's ``core_algos.compute_grpo_outcome_advantage`` (ddof 1, eps 1e-6, the default here)
    compute it. ``leave_one_out``: NeMo-RL's variant, mean and std over the other G - 1 responses,
    dividing only where that std is positive. The loss is the original per-sequence token mean.

    Biased: at G = 2 with rewards in {0, 1} and ddof 0 the advantage is r_1 - r_2 (RLOO's, unbiased
    up to eps); with ddof 1 it is 1/sqrt(2) of that; at larger G the ratio of the expected to the true
    gradient depends on the prompt's success probability."""

    domains = {"G": GROUP, "ddof": OneOf(0, 1), "eps": Interval(0, None), "scale_rewards": OneOf(*SCALES),
               "leave_one_out": FLAG}

    def __init__(self, G: int = 4, ddof: int = 1, eps: float = 1e-6, scale_rewards: str = "group",
                 leave_one_out: bool = False, aggregation: str = "seq-mean-token-mean"):
        super().__init__(G, aggregation)
        if leave_one_out and G - 1 - ddof < 1 and scale_rewards == "group":
            raise ValueError(f"G must be at least {2 + ddof} for a leave-one-out std with ddof {ddof}, got {G}")
        self.ddof, self.eps, self.scale_rewards, self.leave_one_out = ddof, eps, scale_rewards, leave_one_out

    @property
    def advantage_coupling(self) -> str:
        return "batch" if self.scale_rewards == "batch" else "group"

    @property
    def unbiased_advantage(self) -> bool:
        return self.leave_one_out and self.scale_rewards == "none"

    def advantages(self, rewards, lengths, reference):
        if self.leave_one_out:
            mean, std = (s.squeeze(0) for s in group_mean_std(leave_one_out(rewards), self.ddof))
        else:
            mean, std = group_mean_std(rewards, self.ddof)
        centred = _centred(rewards, mean)
        if self.scale_rewards == "none":
            return centred
        if self.scale_rewards == "batch":
            std = group_mean_std(_batch_axis_first(rewards), self.ddof)[1].unsqueeze(-1)
        return torch.where(std > 0, centred / (std + self.eps), centred)


@register_estimator("dr-grpo", "Dr. GRPO: A = r - group mean, no std, loss summed over tokens / max length")
class DrGRPO(SequenceEstimator):
    """GRPO done right (Liu et al. 2025): A_i = r_i - mean, no std; tokens summed and divided by the
    constant maximum length (TRL's ``loss_type='dr_grpo'``). Its expected gradient is exactly
    (G - 1) / (G max_len) of the true one, whatever the prompt: biased in scale, not in direction."""

    domains = {"G": GROUP}

    def __init__(self, G: int = 4, aggregation: str = "seq-mean-token-sum-norm"):
        super().__init__(G, aggregation)

    def advantages(self, rewards, lengths, reference):
        return _centred(rewards, group_mean_std(rewards)[0])


@register_estimator("opo", "OPO: length-weighted optimal baseline, A_i = r_i - sum_j len_j r_j / sum_j len_j")
class OPO(SequenceEstimator):
    """On-policy RL with the optimal reward baseline (Hao et al. 2025, arXiv 2505.23585): the seed
    paper's minimum-variance baseline E[||d log pi||^2 r] / E[||d log pi||^2] (eq. 10) with the
    squared score norm taken proportional to the length, estimated from the group including the
    response itself (so biased like mean-centring)."""

    domains = {"G": GROUP}

    def advantages(self, rewards, lengths, reference):
        scale = rewards.abs().amax(0, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        baseline = (lengths * rewards / scale).sum(0, keepdim=True) / lengths.sum(0, keepdim=True) * scale
        equal = rewards.amax(0, keepdim=True) == rewards.amin(0, keepdim=True)
        return _centred(rewards, torch.where(equal, rewards[:1], baseline))


class _BatchNormalised(SequenceEstimator):
    """REINFORCE++ (Hu 2025) as OpenRLHF's ``experience_maker.py`` computes it: the outcome reward is
    every token's return (gamma 1), then normalised over every token of the batch, A = (A - mean) *
    rsqrt(max(var, 1e-8)) with token-weighted mean and variance (a response of length l counts l
    times). The loss averages over the batch's tokens (OpenRLHF's token-level loss)."""

    advantage_coupling = "batch"
    group_baseline = False

    domains = {"std_norm": FLAG}

    def __init__(self, G: int = 4, std_norm: bool = True, aggregation: str = "token-mean"):
        super().__init__(G, aggregation)
        self.std_norm = std_norm

    def advantages(self, rewards, lengths, reference):
        if self.group_baseline:
            rewards = _centred(rewards, group_mean_std(rewards)[0])
        values, weight = _batch_axis_first(rewards), _batch_axis_first(lengths)
        weight = weight / weight.sum(0, keepdim=True)
        scale = values.abs().amax(0, keepdim=True)  # scaled sums: no overflow of huge rewards' squares
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        mean = (weight * values / scale).sum(0, keepdim=True) * scale
        equal = values.amax(0, keepdim=True) == values.amin(0, keepdim=True)
        mean = torch.where(equal, values[:1], mean).unsqueeze(-1)
        centred = _centred(rewards, mean)
        if not self.std_norm:
            return centred
        flat = _batch_axis_first(centred)
        spread = flat.abs().amax(0, keepdim=True)
        spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        std = (weight * (flat / spread) ** 2).sum(0, keepdim=True).sqrt() * spread
        return centred / std.clamp(min=1e-4).unsqueeze(-1)  # rsqrt(max(var, 1e-8)) without var's overflow


@register_estimator("reinforce-pp", "REINFORCE++: rewards normalised over every token of the batch (OpenRLHF)")
class ReinforcePlusPlus(_BatchNormalised):
    __doc__ = _BatchNormalised.__doc__


@register_estimator("reinforce-pp-baseline",
                    "REINFORCE++-baseline: group mean subtracted, then normalised over the batch's tokens")
class ReinforcePlusPlusBaseline(_BatchNormalised):
    """REINFORCE++-baseline (OpenRLHF 'reinforce_baseline'): r - group mean, then the batch
    normalisation of REINFORCE++."""

    group_baseline = True
    domains = {"G": GROUP}


@register_estimator("remax", "ReMax: the greedy response's reward as baseline, A = r - r(greedy); G + 1 evaluations")
class ReMax(SequenceEstimator):
    """A_i = r_i - r(greedy response) (Li et al. 2023; verl's ``compute_remax_outcome_advantage``):
    the argmax decoding is deterministic, so the baseline does not depend on the samples and the
    estimator is unbiased; it costs one more loss evaluation per prompt."""

    loss_evals = "G + 1"
    advantage_coupling = "none"
    unbiased_advantage = True

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        return self.G + 1

    def reference_losses(self, logits, loss_fn, space):
        return loss_fn(greedy_tokens(logits, space))

    def advantages(self, rewards, lengths, reference):
        return _centred(rewards, reference.unsqueeze(0).expand_as(rewards))


@register_estimator("seq-optimal-baseline",
                    "The seed paper's minimum-variance baseline (eq. 10) per prompt, from running averages")
class SequenceOptimalBaseline(SequenceEstimator):
    """A_i = r_i - b with b = E[||d log pi(y)||^2 r] / E[||d log pi(y)||^2] per prompt (eq. 10, the
    sequence as the unit, its score taken w.r.t. the policy's logits), both expectations running
    averages advanced once per call by ``decay`` and frozen while measured: unbiased, since b comes
    from earlier calls only. OPO's length weighting approximates this ratio."""

    advantage_coupling = "none"
    unbiased_advantage = True
    stateful = True

    domains = {"decay": Interval(0, 1, closed="left")}

    def __init__(self, G: int = 4, decay: float = 0.9, aggregation: str = "seq-mean-token-sum"):
        super().__init__(G, aggregation)
        self.decay = decay
        self.register_buffer("numerator", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("denominator", torch.zeros(0, dtype=torch.float64))

    def baseline(self, prompts: int, like: torch.Tensor) -> torch.Tensor:
        if self.numerator.shape != (prompts,):
            return like.new_zeros(prompts)
        ratio = self.numerator / self.denominator.clamp_min(torch.finfo(torch.float64).tiny)
        return torch.where(self.denominator > 0, ratio, torch.zeros_like(ratio)).to(like.dtype)

    def advantages(self, rewards, lengths, reference):
        return _centred(rewards, self.baseline(rewards.shape[-1], rewards).expand_as(rewards))

    def observe(self, responses, losses):
        weight = responses.score_sq.to(torch.float64)
        rewards = -losses.to(torch.float64)
        num = (weight * rewards).reshape(-1, rewards.shape[-1]).mean(0)
        den = weight.reshape(-1, weight.shape[-1]).mean(0)
        if self.numerator.shape != num.shape:
            self.numerator, self.denominator = num.clone(), den.clone()
            return
        self.numerator.mul_(self.decay).add_((1 - self.decay) * num)
        self.denominator.mul_(self.decay).add_((1 - self.decay) * den)
