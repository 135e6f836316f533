"""Relaxation-based control variates for Bernoulli units: REBAR (Tucker et al. 2017) and RELAX
(Grathwohl et al. 2018). Unbiased; their control variates' parameters (temperature, scale, a small
network) are the estimator's own, trained to minimise the variance of the estimate.

Shared construction, with a = logits, theta = sigm(a), and two logistic draws e1, e2:
z = a + e1 ~ p(z) (logistic), b = H(z) = 1[z > 0] ~ Bernoulli(theta), and the conditional sample
z~ ~ p(z | b) reparametrised by e2 (= logit(v), v ~ U[0,1]):
z~ = softplus(e2 + softplus(a)) if b = 1, -softplus(e2 + softplus(-a)) if b = 0,
i.e. a + logit(1 - theta + v theta) and a + logit(v (1 - theta)): the two branches of
Tucker et al.'s conditional noise, in forms that stay finite for any a. The relaxation is
sigma_lambda(z) = sigm(z / lambda) with temperature lambda = exp(log_temperature).

The loss is evaluated at the binary b (the surrogate's value; parameters inside the loss get
d L(b) / d theta) and, in a second call, at the two relaxed points (control variate only: no
gradient of the surrogate reaches the loss through them, nor the estimator's own parameters).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import Estimator, LossFn, NoiseLaw, attach_gradient
from estimators.domains import SEED, Count, Interval, OneOf
from estimators.own_parameters import LazyMLP, add_objective_gradient

# |log temperature| is clamped here when used: beyond it sigm(z / lambda) is already a hard step
# (lambda < 4e-18) or a constant 1/2 (lambda > 2e17), and z / lambda stays finite in float32.
LOG_TEMPERATURE_BOUND = 40.0


class RelaxedControlVariate(Estimator):
    """g = (L(b) - c(z~)) (b - theta) + d/da [c(z) - c(z~)], with c a differentiable control
    variate of the relaxed sample; subclasses define c. Computed in at least float32 internally
    (float16/bfloat16 logits give float16/bfloat16 loss evaluations and estimates).

    Own parameters and objective: while ``update_state`` is True, the gradient of mean ||g||^2
    (the variance of g up to a constant, since E[g] does not depend on them) w.r.t. the control
    variate's parameters is added into their ``.grad`` (create_graph through d/da)."""

    family = "control variate"
    unbiased = True
    loss_evals = 3
    needs_loss_backprop = True
    randomness = "continuous"
    has_parameters = True
    loss_rounding = 1.0  # (L(b) - c(z~)) (b - theta)
    adaptation_lr = 3e-2
    domains = {"temperature": Interval(0, None, closed="neither"), "eta": Interval()}

    def __init__(self, temperature: float, eta: float):
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature)))
        self.eta = torch.nn.Parameter(torch.tensor(float(eta)))

    @property
    def temperature(self) -> float:
        return math.exp(float(self.log_temperature.detach()))

    def own_parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_temperature, self.eta]

    def control(self, relaxed_losses: torch.Tensor, z: torch.Tensor, z_tilde: torch.Tensor,
                logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c(z), c(z~)) from the losses at (sigma_lambda(z), sigma_lambda(z~)), shape (2, *batch)."""
        raise NotImplementedError

    def noise_laws(self, logits, categorical=False):
        """e1, e2 logistic per unit: b = 1[a + e1 > 0] changes at e1 = -a; z~ is smooth in e2 given b."""
        return NoiseLaw("logistic", breaks=-logits[..., None]), NoiseLaw("logistic")

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        work = torch.promote_types(logits.dtype, torch.float32)
        with torch.enable_grad():
            a = logits.detach().to(work).requires_grad_(True)
            e1 = self.rng.logistic(a.shape, a.detach())
            e2 = self.rng.logistic(a.shape, a.detach())
            z = a + e1
            b = (z.detach() > 0).to(work)
            z_tilde = torch.where(b > 0, F.softplus(e2 + F.softplus(a)), -F.softplus(e2 + F.softplus(-a)))
        loss = loss_fn(b.to(logits.dtype))
        with torch.enable_grad():
            inverse_temperature = torch.exp(-self.log_temperature.clamp(-LOG_TEMPERATURE_BOUND,
                                                                        LOG_TEMPERATURE_BOUND)).to(work)
            relaxed = torch.stack([torch.sigmoid(z * inverse_temperature),
                                   torch.sigmoid(z_tilde * inverse_temperature)])
            relaxed_losses = loss_fn(relaxed.to(logits.dtype))
            if not relaxed_losses.requires_grad:
                raise RuntimeError(f"{self.name}: the loss must be differentiable in h "
                                   "(the relaxed control variate needs dL/dh)")
            c_z, c_tilde = self.control(relaxed_losses.to(work), z, z_tilde, logits.detach())
            (pathwise,) = torch.autograd.grad((c_z - c_tilde).sum(), a, create_graph=self.update_state)
            score = b - torch.sigmoid(a.detach())
            grad = (loss.detach().to(work) - c_tilde).unsqueeze(-1) * score + pathwise
            if self.update_state:
                add_objective_gradient((grad**2).sum(-1).mean(), self.own_parameters())
        return attach_gradient(loss, logits, grad.detach().to(logits.dtype))


@register_estimator("rebar", "REBAR: Concrete-relaxation control variate with learned temperature and "
                             "scale eta (Tucker et al. 2017); 3 evaluations, needs dL/dh")
class REBAR(RelaxedControlVariate):
    """REBAR (Tucker et al. 2017), single sample, for Bernoulli units:
    g = [L(b) - eta L(sigma_lambda(z~))] d log p(b)/da + eta d/da L(sigma_lambda(z))
        - eta d/da L(sigma_lambda(z~)),
    with d log p(b)/da = b - sigm(a). ``temperature`` lambda (learned as log lambda) and ``eta``
    start at the paper's 0.5 and 1; both are trained to minimise the variance of g."""

    def __init__(self, temperature: float = 0.5, eta: float = 1.0):
        super().__init__(temperature, eta)

    def control(self, relaxed_losses, z, z_tilde, logits):
        scaled = self.eta.to(relaxed_losses.dtype) * relaxed_losses
        return scaled[0], scaled[1]


RELAX_FORMS = ("grathwohl", "disarm")


@register_estimator("relax", "RELAX: REBAR's control variate plus a learned network of the relaxed "
                             "sample (Grathwohl et al. 2018); 3 evaluations, needs dL/dh")
class RELAX(RelaxedControlVariate):
    """RELAX (Grathwohl et al. 2018), discrete case, for Bernoulli units:
    g = [L(b) - c(z~)] d log p(b)/da + d/da c(z) - d/da c(z~), with a control variate c of the
    logistic sample z (and of z~), built from REBAR's term and a free-form network r_rho.

    ``form`` 'grathwohl' (the default; the control variate of their discrete experiments):
    c(z) = eta L(sigma_lambda(z)) + r_rho(z), r_rho one hidden layer of ``hidden`` tanh units whose
    output layer starts at 0, so RELAX starts as REBAR.
    ``form`` 'disarm': the control variate of the official DisARM code (google-research
    ``disarm/binary/networks.py``, ``DiscreteVAE.get_relax_control_variate``, the network built in
    ``experiment_launcher_singlelayer.main``): c(z) = eta [L(sigma_lambda(z)) + r_rho(z)], the network
    scaled by eta too, r_rho = Dense(hidden, LeakyReLU(0.3)) -> Dense(1) with Keras's Glorot-uniform
    weights and zero biases (theirs: hidden = 137, temperature 0.1 at the start: write
    ``relax(form='disarm',hidden=137,temperature=0.1)``). Their network reads (x, z); the contract
    gives an estimator the logits, so here, in both forms, r_rho reads the detached logits beside z (a
    function of the input, held constant: c stays a function of z alone at this a, as the identity
    behind g requires). lambda, eta and rho are trained to minimise the variance of g."""

    domains = {"hidden": Count(1), "init_seed": SEED, "form": OneOf(*RELAX_FORMS)}

    def __init__(self, temperature: float = 0.5, eta: float = 1.0, hidden: int = 16, init_seed: int = 0,
                 form: str = "grathwohl"):
        super().__init__(temperature, eta)
        self.hidden, self.form = hidden, form
        self.network = LazyMLP(hidden, init_seed, "keras" if form == "disarm" else "zero-output")

    def own_parameters(self):
        return [self.log_temperature, self.eta, *self.network.parameters()]

    def control(self, relaxed_losses, z, z_tilde, logits):
        eta = self.eta.to(relaxed_losses.dtype)
        given = logits.to(z.dtype).expand(2, *logits.shape)
        r = self.network(torch.cat([given, torch.stack([z, z_tilde])], dim=-1))
        c = eta * (relaxed_losses + r) if self.form == "disarm" else eta * relaxed_losses + r
        return c[0], c[1]
