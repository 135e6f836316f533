"""Mixture-of-experts routers: the seed paper's gater grown up, small enough to enumerate every routing.

``moe-router``: ``inputs`` seeded examples x_n (d numbers each) go through one mixture-of-experts
layer: router logits x_n W (W, d x E, the parameters the gradient is taken with respect to, seeded
N(0, logit_scale^2 / d)), E fixed seeded experts f_e(x) = tanh(x A_e) (``width`` outputs each, A_e
N(0, 1 / d)), the k kept experts mixed with their weights (``weights``: 'softmax' p_e, or
'renormalised' p_e / the kept experts' sum), and the loss sum_n ||head(y_n) - t_n||^2 against seeded
targets, ``head`` 'tanh' (default: a non-linearity after the layer, as the next layer of a network
puts there) or 'linear' (the loss is then quadratic in the one-hot choice of top-1 routing, where
ReinMax is exact: a check). The routing (``routing``) is
- 'sampled' (as SparseMixer samples): the k experts drawn without replacement from softmax(x_n W),
  so the objective is E[sum_n L_n] over routings, smooth in W; its exact gradient sums every ordered
  choice of k experts out of E (E!/(E - k)! per input), autograd through P(routing) and the weights;
- 'topk' (the conventional router): the k largest logits, so the objective is the loss itself; its
  exact gradient (away from ties, which the seeded point does not have) is the derivative through the
  kept weights, which is what the conventional router computes: there the question is how far the
  others move from it.
Estimators are the router estimators (``estimators.routers``, the contract ``estimators.mixture``, ``variables = 'router'``); their cost is
counted in expert evaluations per estimate (k or E per input), stored as the ``expert_evals`` metric.
"""
from __future__ import annotations

import copy
import itertools
import math

import torch

from estimators.domains import NON_NEGATIVE, POSITIVE, SEED, Count, OneOf
from estimators.mixture import ROUTINGS, WEIGHTS, MoELayer, combine, kept_weights
from problems import register_problem
from problems.base import EnumerableProblem, LossObserver, Record
from problems.training import EVAL_EXAMPLES, TRAIN_EXAMPLES, MnistTrainingProblem, subset

HEADS = ("tanh", "linear")
MAX_ROUTINGS = 2**16  # ordered routings per input enumerated for the exact gradient


def _check_layer(experts: int, top_k: int) -> None:
    """The relation between the layer's declared parameters: each example keeps fewer experts than exist."""
    if top_k >= experts:
        raise ValueError(f"top_k must be below experts ({experts}), got {top_k}")


LAYER_DOMAINS = {"experts": Count(2), "top_k": Count(1), "routing": OneOf(*ROUTINGS), "weights": OneOf(*WEIGHTS)}


def expert_evaluations(estimator, top_k: int, experts: int) -> int:
    """Experts a router estimator evaluates per routed example (ValueError for any other estimator)."""
    per_input = getattr(estimator, "expert_evaluations", None)
    if not callable(per_input):
        raise ValueError(f"{estimator.name or type(estimator).__name__} is not a router estimator")
    return per_input(top_k, experts)


def check_router_estimator(estimator, top_k: int, weights: str, routing: str) -> None:
    """The estimator's own reason it cannot serve this layer (the harness stores the pair as skipped)."""
    check = getattr(estimator, "check_router", None)
    if callable(check):
        check(top_k, weights, routing)


@register_problem("moe-router",
                  "Mixture-of-experts router: E experts, top-k routing sampled or deterministic; exact router "
                  "gradient by enumerating routings")
class MoERouter(EnumerableProblem):
    """The gradient of sum_n E[||y_n - t_n||^2] (or of the deterministic top-k loss) w.r.t. the
    router's weights W at a seeded point; see the module docstring. Units: one routing decision per
    input. ``dim`` = d * E, row-major W (input feature, expert)."""

    variables = "router"
    domains = {**LAYER_DOMAINS, "d": Count(1), "inputs": Count(1), "width": Count(1), "head": OneOf(*HEADS),
               "logit_scale": NON_NEGATIVE, "data_seed": SEED}

    def __init__(self, experts: int = 4, top_k: int = 1, d: int = 3, inputs: int = 2, width: int = 2,
                 routing: str = "sampled", weights: str = "softmax", head: str = "tanh", logit_scale: float = 1.0,
                 data_seed: int = 0):
        super().__init__()
        _check_layer(experts, top_k)
        self.head = head
        if math.perm(experts, top_k) > MAX_ROUTINGS:
            raise ValueError(f"experts and top_k give {math.perm(experts, top_k)} ordered routings per input, "
                             f"more than {MAX_ROUTINGS} to enumerate")
        self.experts, self.top_k, self.d, self.inputs_count, self.width = experts, top_k, d, inputs, width
        self.routing, self.weights, self.logit_scale, self.data_seed = routing, weights, logit_scale, data_seed
        g = torch.Generator().manual_seed(data_seed)
        x = torch.randn(inputs, d, generator=g, dtype=torch.float64)
        router = torch.randn(d, experts, generator=g, dtype=torch.float64) * logit_scale / math.sqrt(d)
        mixing = torch.randn(experts, d, width, generator=g, dtype=torch.float64) / math.sqrt(d)
        target = torch.randn(inputs, width, generator=g, dtype=torch.float64)
        self.register_buffer("x", x.float())
        self.register_buffer("router", router.float())
        self.register_buffer("outputs", torch.tanh(torch.einsum("nd,edw->new", x, mixing)).float())  # (N, E, width)
        self.register_buffer("target", target.float())

    @property
    def dim(self) -> int:
        return self.d * self.experts

    @property
    def units(self) -> int:
        return self.inputs_count

    def layer(self, counter: list[int] | None = None) -> MoELayer:
        """The layer as router estimators see it; ``counter[0]`` accumulates expert evaluations."""
        outputs = self.outputs

        def experts(mask: torch.Tensor) -> torch.Tensor:
            if counter is not None:
                counter[0] += int(mask.sum())
            return outputs.to(mask.device) * mask.unsqueeze(-1).to(outputs.dtype)

        return MoELayer(self.top_k, self.weights, self.routing, experts)

    def loss(self, y: torch.Tensor) -> torch.Tensor:
        """L_n = ||head(y_n) - t_n||^2 of layer outputs y (..., inputs, width) -> (..., inputs)."""
        out = torch.tanh(y) if self.head == "tanh" else y
        return ((out - self.target.to(y.dtype)) ** 2).sum(-1)

    def logits(self, router: torch.Tensor) -> torch.Tensor:
        return self.x.to(router.dtype) @ router

    # -- the estimator's side -------------------------------------------------------------------
    def check_estimator(self, estimator) -> None:
        check_router_estimator(estimator, self.top_k, self.weights, self.routing)

    def evaluations_per_estimate(self, estimator) -> int:
        """Expert evaluations per estimate: the estimator's per input, times the inputs."""
        return expert_evaluations(estimator, self.top_k, self.experts) * self.inputs_count

    def cost_per_estimate(self, estimator) -> dict[str, float]:
        return {"expert_evals": float(self.evaluations_per_estimate(estimator))}

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        router = self.router.detach().expand(n, *self.router.shape).clone().requires_grad_(True)
        loss_fn = self.loss if observe is None else observe(self.loss)
        surrogate = estimator(self.logits(router), loss_fn, router=self.layer())
        (grad,) = torch.autograd.grad(surrogate.sum(), router)
        return grad.reshape(n, -1)

    # -- exact values -----------------------------------------------------------------------------
    def routings(self) -> torch.Tensor:
        """Every ordered choice of top_k distinct experts, (R, k)."""
        return torch.tensor(list(itertools.permutations(range(self.experts), self.top_k)), dtype=torch.long)

    def _expected_loss(self, router: torch.Tensor) -> torch.Tensor:
        """sum_n E[L_n] (sampled) or sum_n L_n(top-k) as a differentiable function of W (float64)."""
        logits = self.logits(router)  # (N, E)
        probs = torch.softmax(logits, -1)
        if self.routing == "topk":
            index = logits.detach().topk(self.top_k, -1).indices  # (N, k)
            y = (kept_weights(probs, index, self.weights).unsqueeze(-1)
                 * self.outputs[torch.arange(self.inputs_count).unsqueeze(-1), index]).sum(-2)
            return self.loss(y).sum()
        S = self.routings()  # (R, k)
        R = S.shape[0]
        log_p = torch.zeros(self.inputs_count, R, dtype=logits.dtype)
        taken = torch.zeros(R, self.experts, dtype=torch.bool)
        for j in range(self.top_k):
            masked = logits.unsqueeze(1).masked_fill(taken, -math.inf)  # (N, R, E)
            log_p = log_p + torch.log_softmax(masked, -1).gather(-1, S[:, j].expand(self.inputs_count, R)
                                                                 .unsqueeze(-1)).squeeze(-1)
            taken = taken | torch.nn.functional.one_hot(S[:, j], self.experts).bool()
        index = S.expand(self.inputs_count, R, self.top_k)
        w = kept_weights(probs.unsqueeze(1).expand(-1, R, -1), index, self.weights)  # (N, R, k)
        picked = self.outputs.unsqueeze(1).expand(-1, R, -1, -1).gather(
            -2, index.unsqueeze(-1).expand(-1, -1, -1, self.width))  # (N, R, k, width)
        y = (w.unsqueeze(-1) * picked).sum(-2)  # (N, R, width)
        return (log_p.exp() * self.loss(y.transpose(0, 1)).T).sum()

    def _float64(self) -> "MoERouter":
        return copy.deepcopy(self).to("cpu", torch.float64)

    def exact_gradient(self) -> torch.Tensor:
        problem = self._float64()
        router = problem.router.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem._expected_loss(router), router)
        return grad.reshape(-1)

    def enumerate_gradient(self) -> torch.Tensor:
        return self.exact_gradient()

    def expected_loss(self) -> float:
        problem = self._float64()
        return float(problem._expected_loss(problem.router))

    def routing_probabilities(self) -> torch.Tensor:
        """softmax(x_n W) per input (N, E), float64."""
        problem = self._float64()
        return torch.softmax(problem.logits(problem.router), -1)


# -- training: a small MoE classifier on MNIST -----------------------------------------------------------
class MoEClassifier(torch.nn.Module):
    """Router logits = x R + c (784 -> E); expert e: 784 -> ``hidden`` tanh -> 10 class logits; the
    layer's output is the mixture of the kept experts' class logits. Experts are evaluated only on the
    examples a mask gives them (conditional computation: a dense backward pass shows in the time)."""

    def __init__(self, experts: int, hidden: int, generator: torch.Generator):
        super().__init__()
        from problems.training import CLASSES, INPUTS

        def uniform(*shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return torch.nn.Parameter(torch.rand(*shape, generator=generator) * (2 * bound) - bound)

        self.router = uniform(INPUTS, experts, fan_in=INPUTS)
        self.router_bias = torch.nn.Parameter(torch.zeros(experts))
        self.w1, self.b1 = uniform(experts, INPUTS, hidden, fan_in=INPUTS), torch.nn.Parameter(torch.zeros(experts, hidden))
        self.w2, self.b2 = uniform(experts, hidden, CLASSES, fan_in=hidden), torch.nn.Parameter(torch.zeros(experts, CLASSES))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.router + self.router_bias

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def experts(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, E, classes): expert e's output on the rows where ``mask`` (.., B, E) asks for it, 0 elsewhere."""
        wanted = mask.reshape(-1, *mask.shape[-2:]).any(0)
        columns = []
        for e in range(wanted.shape[-1]):
            rows = wanted[:, e].nonzero().squeeze(-1)
            out = x.new_zeros(x.shape[0], self.w2.shape[-1])
            columns.append(out.index_copy(0, rows, self.expert(e, x[rows])) if rows.numel() else out)
        return torch.stack(columns, -2) * mask.unsqueeze(-1).to(x.dtype)

    def inference(self, x: torch.Tensor, top_k: int, weights: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, kept experts (B, k)) of deterministic top-k routing: the model at test time."""
        logits = self.logits(x)
        index = logits.topk(top_k, -1).indices
        probs = torch.softmax(logits, -1)
        mask = torch.nn.functional.one_hot(index, logits.shape[-1]).sum(-2).bool()
        outputs = self.experts(x, mask)
        return combine(outputs, index, kept_weights(probs, index, weights)), index


@register_problem("moe-mnist", "A small mixture-of-experts classifier on MNIST trained through its router: "
                               "errors, expert load balance, expert evaluations and time per step")
class MoEMnist(MnistTrainingProblem):
    """E experts (784 -> ``hidden`` tanh -> 10), a linear router, top-k routing (``routing`` 'sampled'
    or 'topk', ``weights`` as ``moe-router``), trained with Adam at ``lr`` on the cross-entropy of the
    layer's output through the router estimator, plus ``balance`` times Switch Transformer's
    load-balancing loss E sum_e f_e P_e (f_e: the fraction of the mini-batch whose top-k includes e,
    P_e: the mean router probability). Test time routes deterministically top-k for every estimator.

    Per epoch: ``train_loss`` (mean cross-entropy of the training forward output, nats),
    ``valid_error`` and ``test_error`` (% misclassified), ``load_imbalance`` (on the test set, the
    largest expert's share of the routed slots times E: 1 is balanced, E is one expert taking all),
    ``expert_evals`` (expert evaluations per training example, counted), ``epoch_time_s`` and
    ``step_time_s`` (the training pass, and per mini-batch); at the end ``flops_per_example``
    (multiply-adds of the training forward pass at the last epoch's expert evaluations)."""

    variables = "router"
    dataset = "mnist"

    domains = {**LAYER_DOMAINS, "hidden": Count(1), "epochs": Count(1), "batch_size": Count(1), "lr": POSITIVE,
               "balance": NON_NEGATIVE, "train_subset": subset(TRAIN_EXAMPLES), "eval_subset": subset(EVAL_EXAMPLES)}

    def __init__(self, experts: int = 4, top_k: int = 1, hidden: int = 32, routing: str = "sampled",
                 weights: str = "softmax", epochs: int = 3, batch_size: int = 100, lr: float = 1e-3,
                 balance: float = 0.01, train_subset: int = 10_000, eval_subset: int = 2_000):
        super().__init__()
        _check_layer(experts, top_k)
        self.experts, self.top_k, self.hidden, self.routing, self.weights = experts, top_k, hidden, routing, weights
        self.epochs, self.batch_size, self.lr, self.balance = epochs, batch_size, lr, balance
        self.train_subset, self.eval_subset = train_subset, eval_subset

    @property
    def units(self) -> int:
        return 1  # one routing decision per example

    def check_estimator(self, estimator) -> None:
        check_router_estimator(estimator, self.top_k, self.weights, self.routing)

    def evaluations_per_estimate(self, estimator) -> int:
        return expert_evaluations(estimator, self.top_k, self.experts)

    def model_for(self, estimator, seed: int) -> MoEClassifier:
        from problems.training import Stream, seeded_generator

        return MoEClassifier(self.experts, self.hidden, seeded_generator(seed, Stream.INIT)).to(self.device)

    def fit(self, estimator, seed: int, progress=None):
        from problems.training import Stopwatch, Stream, seeded_generator, train_epoch

        data = self.splits()
        model = self.trained_model = self.model_for(estimator, seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr)
        order = seeded_generator(seed, Stream.ORDER)
        counter = [0]

        def step(x: torch.Tensor, y: torch.Tensor):
            logits = model.logits(x)
            layer = MoELayer(self.top_k, self.weights, self.routing,
                             lambda mask: (counter.__setitem__(0, counter[0] + int(mask.sum())), model.experts(x, mask))[1])
            surrogate = estimator(logits, lambda out: torch.nn.functional.cross_entropy(out, y, reduction="none"),
                                  router=layer)
            objective = surrogate.mean()
            if self.balance > 0:
                probs = torch.softmax(logits, -1)
                top = torch.nn.functional.one_hot(logits.detach().topk(self.top_k, -1).indices,
                                                  self.experts).sum(-2).to(probs.dtype)
                objective = objective + self.balance * self.experts * (top.mean(0) * probs.mean(0)).sum()
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
            return (surrogate.detach().sum(),)

        n_train = data["train"][0].shape[0]
        batches = math.ceil(n_train / self.batch_size)
        for epoch in range(1, self.epochs + 1):
            counter[0] = 0
            (loss_sum,), seconds = train_epoch(step, data["train"], self.batch_size, order, [torch.zeros(())],
                                               progress=progress)
            watch = Stopwatch(self.device)
            model.eval()
            with torch.no_grad():
                valid_error, _ = self._error(model, *data["valid"])
                test_error, load = self._error(model, *data["test"])
            model.train()
            yield Record("train_loss", float(loss_sum) / n_train, epoch=epoch)
            yield Record("valid_error", valid_error, epoch=epoch)
            yield Record("test_error", test_error, epoch=epoch)
            yield Record("load_imbalance", float(load.max()) * self.experts, epoch=epoch)
            yield Record("expert_evals", counter[0] / n_train, epoch=epoch)
            yield Record("epoch_time_s", seconds, epoch=epoch)
            yield Record("step_time_s", seconds / batches, epoch=epoch)
            yield Record("eval_time_s", watch.seconds(), epoch=epoch)
        yield Record("flops_per_example", float(self.flops_per_example(counter[0] / n_train)))

    def flops_per_example(self, expert_evals: float) -> float:
        """Multiply-adds of one training forward pass per example: the router (784 x E) and the
        experts evaluated (784 x hidden + hidden x 10 each)."""
        from problems.training import CLASSES, INPUTS

        return INPUTS * self.experts + expert_evals * (INPUTS * self.hidden + self.hidden * CLASSES)

    def _error(self, model: MoEClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(% misclassified, each expert's share of the routed slots) with deterministic top-k routing."""
        out, index = model.inference(x, self.top_k, self.weights)
        share = torch.bincount(index.reshape(-1), minlength=self.experts).to(torch.float64) / index.numel()
        return float((out.argmax(-1) != y).to(torch.float64).mean() * 100), share
