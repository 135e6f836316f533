"""Problem layer: a contract every registered gradient problem must meet, closed forms checked
independently, and parameter validation through the registry.

``ProblemContract`` is a mixin (BoTorch's problem-mixin style): a test class lists the specs
``(name, params)`` it covers in ``specs`` and inherits every contract test, parametrised over those
specs by ``pytest_generate_tests`` below. It serves any gradient problem whose loss is a function
of all its stochastic units, ``loss(h)`` with h of shape (..., units), and whose gradient is taken
w.r.t. the parameters of their distribution: a family class says which tensors those are, in
gradient order (``gradient_tensors``), and re-implements log P(h) from them (``log_prob``), so the
problem's enumerated gradient is checked against autograd of an independently written
sum_h P(h) L(h). ``BernoulliContract`` does that for independent units at ``logits``. Family
classes add their own closed-form checks. Training problems (``trains_model = True``) have no
gradient to check and are not covered here.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import problems
from estimators.base import all_categories, all_configurations
from estimators.registry import BUILTIN, RegistryError
from problems.base import BernoulliProblem, Problem, Reference

DTYPES = [torch.float32, torch.float64]


def spec_id(spec) -> str:
    name, params = spec
    if not params:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in params.items())})"


def build(spec) -> Problem:
    name, params = spec
    return problems.build_problem(name, dict(params))


def pytest_generate_tests(metafunc):
    """Parametrise ``spec`` over the ``specs`` of the test class that asks for it."""
    if "spec" in metafunc.fixturenames and metafunc.cls is not None and hasattr(metafunc.cls, "specs"):
        specs = list(metafunc.cls.specs)
        metafunc.parametrize("spec", specs, ids=[spec_id(s) for s in specs])


class ProblemContract:
    """Contract tests for one gradient-problem family. Subclasses set ``specs`` and the two hooks."""

    specs: list[tuple[str, dict]] = []

    def gradient_tensors(self, problem) -> list[torch.Tensor]:
        """The problem's tensors the gradient is taken with respect to, in gradient order."""
        raise NotImplementedError

    def log_prob(self, problem, tensors: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """log P(h) of configurations h (..., units) as a differentiable function of ``tensors``."""
        raise NotImplementedError

    def configurations(self, problem, dtype, device=None) -> torch.Tensor:
        """Every configuration of the problem's units, one per row (binary units: 2^units rows)."""
        return all_configurations(problem.units, dtype, device)

    def event_shape(self, problem) -> tuple[int, ...]:
        """The trailing shape of one configuration: (units,) for binary units."""
        return (problem.units,)

    def random_units(self, problem, lead: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Random configurations of shape (*lead, *event_shape)."""
        return torch.bernoulli(torch.full((*lead, problem.units), 0.5), generator=generator)

    def test_registered_name_and_description(self, spec):
        problem = build(spec)
        assert problem.name == spec[0]
        assert isinstance(problem.description, str) and problem.description
        assert problem.trains_model is False

    def test_dim_and_units(self, spec):
        problem = build(spec)
        assert isinstance(problem.dim, int) and problem.dim >= 1
        assert isinstance(problem.units, int) and problem.units >= 1
        assert problem.dim == sum(t.numel() for t in self.gradient_tensors(problem))
        if "d" in spec[1]:
            assert problem.units == spec[1]["d"]

    def test_scopes_are_named_slices_of_the_gradient(self, spec):
        problem = build(spec)
        for name, where in problem.scopes().items():
            assert isinstance(name, str) and name and name != "all"
            assert isinstance(where, slice) and where.step in (None, 1)
            assert 0 <= where.start < where.stop <= problem.dim, name

    @pytest.mark.parametrize("extra", [(), (3,), (2, 3)], ids=["no-extra", "extra-3", "extra-2x3"])
    def test_loss_shape_with_extra_leading_dims(self, spec, extra):
        problem = build(spec)
        h = self.random_units(problem, (*extra, 5), torch.Generator().manual_seed(0))
        out = problem.loss(h)
        assert out.shape == (*extra, 5)
        # each entry is the loss of its own row: no mixing across leading axes
        flat = problem.loss(h.reshape(-1, *self.event_shape(problem))).reshape(*extra, 5)
        torch.testing.assert_close(out, flat)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
    def test_dtype_preserved(self, spec, dtype):
        problem = build(spec).to(dtype)
        assert problem.dtype == dtype
        assert all(t.dtype == dtype for t in self.gradient_tensors(problem))
        h = self.configurations(problem, dtype)[:16]
        out = problem.loss(h)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()

    def test_float32_and_float64_losses_agree(self, spec):
        problem = build(spec)
        h = self.configurations(problem, torch.float64)[:32]
        lo = problem.loss(h.float()).double()
        hi = problem.to(torch.float64).loss(h)
        torch.testing.assert_close(lo, hi, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("device", [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason="no CUDA device on this machine")),
    ])
    def test_device(self, spec, device):
        problem = build(spec).to(device)
        assert all(t.device.type == device for t in self.gradient_tensors(problem))
        h = self.configurations(problem, torch.float32, device)[:8]
        out = problem.loss(h)
        assert out.device.type == device
        reference = problem.reference()  # the reference is always float64 on the CPU
        assert reference.gradient.device.type == "cpu" and reference.gradient.dtype == torch.float64
        torch.testing.assert_close(reference.gradient, build(spec).reference().gradient,
                                   rtol=1e-6, atol=1e-9)

    def test_exact_gradient_matches_enumeration(self, spec):
        problem = build(spec).to(torch.float64)
        exact = problem.exact_gradient()
        enumerated = problem.enumerate_gradient()
        assert exact.shape == (problem.dim,)
        assert exact.dtype == torch.float64 and enumerated.dtype == torch.float64
        torch.testing.assert_close(exact, enumerated, rtol=0, atol=1e-12)

    def test_enumerated_gradient_matches_autograd_of_expected_loss(self, spec):
        # An independent route: differentiate sum_h P(h) L(h) with autograd.
        problem = build(spec).to(torch.float64)
        tensors = [t.detach().clone().requires_grad_(True) for t in self.gradient_tensors(problem)]
        h = self.configurations(problem, torch.float64)
        expected = (self.log_prob(problem, tensors, h).exp() * problem.loss(h)).sum()
        grads = torch.autograd.grad(expected, tensors)
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.testing.assert_close(problem.exact_gradient(), flat, rtol=0, atol=1e-12)
        assert problem.expected_loss() == pytest.approx(float(expected.detach()), abs=1e-12)

    def test_reference_is_exact(self, spec):
        problem = build(spec)
        reference = problem.reference()
        assert isinstance(reference, Reference)
        assert reference.exact is True and reference.stderr is None
        assert reference.gradient.shape == (problem.dim,)
        assert reference.gradient.dtype == torch.float64
        torch.testing.assert_close(reference.gradient, problem.to(torch.float64).exact_gradient(),
                                   rtol=0, atol=1e-12)

    def test_expected_loss_is_probability_weighted_mean(self, spec):
        problem = build(spec).to(torch.float64)
        h = self.configurations(problem, torch.float64)
        weight = self.log_prob(problem, self.gradient_tensors(problem), h).exp()
        assert float(weight.sum()) == pytest.approx(1.0, abs=1e-12)
        assert problem.expected_loss() == pytest.approx(float((weight * problem.loss(h)).sum()), abs=1e-12)

    def test_data_is_reproducible(self, spec):
        a, b = build(spec), build(spec)
        assert [name for name, _ in a.named_buffers()] == [name for name, _ in b.named_buffers()]
        for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
            assert torch.equal(x, y), name

    sample_estimator = "reinforce"  # an estimator that serves the family's units

    def test_sample_gradients_shape(self, spec):
        from estimators import build_estimator

        problem = build(spec)
        estimator = build_estimator(self.sample_estimator)
        estimator.rng.generator = torch.Generator().manual_seed(0)
        grads = problem.sample_gradients(estimator, 7)
        assert grads.shape == (7, problem.dim)
        assert grads.dtype == problem.dtype


class BernoulliContract(ProblemContract):
    """Independent units h_i ~ Bernoulli(sigm(logits_i)); the gradient is w.r.t. ``logits``."""

    def gradient_tensors(self, problem):
        return [problem.logits]

    def log_prob(self, problem, tensors, h):
        (logits,) = tensors
        return (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)


class TestBernoulliTarget(BernoulliContract):
    specs = [("bernoulli-target", {}), ("bernoulli-target", {"d": 3, "t": 0.3, "logit": -1.5})]

    def test_closed_form_by_hand(self, spec):
        problem = build(spec)
        d, t, logit = problem.d, problem.t, problem.logit
        s = 1 / (1 + math.exp(-logit))
        by_hand = torch.full((d,), (1 - 2 * t) * s * (1 - s), dtype=torch.float64)
        torch.testing.assert_close(problem.exact_gradient(), by_hand, rtol=0, atol=1e-12)

    def test_loss_by_hand(self, spec):
        problem = build(spec).to(torch.float64)
        h = all_configurations(problem.units, torch.float64)
        by_hand = torch.tensor([sum((x - problem.t) ** 2 for x in row) for row in h.tolist()],
                               dtype=torch.float64)
        torch.testing.assert_close(problem.loss(h), by_hand, rtol=0, atol=1e-12)


class TestBernoulliQuadratic(BernoulliContract):
    specs = [("bernoulli-quadratic", {}), ("bernoulli-quadratic", {"d": 5, "data_seed": 3})]

    def test_closed_form_matches_finite_differences_of_expected_loss(self, spec):
        problem = build(spec).to(torch.float64)
        base = problem.logits.detach().clone()
        step = 1e-5
        fd = torch.zeros(problem.dim, dtype=torch.float64)
        for i in range(problem.dim):
            shift = torch.zeros_like(base)
            shift[i] = step
            problem.logits.copy_(base + shift)
            up = problem.expected_loss()
            problem.logits.copy_(base - shift)
            down = problem.expected_loss()
            fd[i] = (up - down) / (2 * step)
        problem.logits.copy_(base)
        torch.testing.assert_close(problem.exact_gradient(), fd, rtol=0, atol=1e-7)

    def test_loss_by_hand(self, spec):
        problem = build(spec).to(torch.float64)
        A, b = problem.A.numpy(), problem.b.numpy()
        h = all_configurations(problem.units, torch.float64)[:20]
        by_hand = torch.tensor([row @ A @ row + b @ row for row in h.numpy()], dtype=torch.float64)
        torch.testing.assert_close(problem.loss(h), by_hand, rtol=0, atol=1e-12)

    def test_data_seed_changes_the_problem(self, spec):
        name, params = spec
        other = problems.build_problem(name, {**params, "data_seed": params.get("data_seed", 0) + 1})
        assert not torch.equal(build(spec).A, other.A)


class TestBernoulliBlackbox(BernoulliContract):
    specs = [("bernoulli-blackbox", {}), ("bernoulli-blackbox", {"d": 6, "hidden": 4, "data_seed": 2})]

    def test_loss_by_hand(self, spec):
        problem = build(spec).to(torch.float64)
        W, c, v, w = (problem.W.numpy(), problem.c.numpy(), problem.v.numpy(), problem.w.numpy())
        import numpy as np

        h = all_configurations(problem.units, torch.float64)[:20].numpy()
        by_hand = torch.tensor([np.tanh(W @ row + c) @ v + w @ row for row in h], dtype=torch.float64)
        torch.testing.assert_close(problem.loss(torch.from_numpy(h)), by_hand, rtol=0, atol=1e-12)

    def test_units_interact(self, spec):
        # the point of the family: the loss is not additive over units
        problem = build(spec).to(torch.float64)
        h = all_configurations(problem.units, torch.float64)
        values = problem.loss(h)
        zero = values[0]
        singles = torch.stack([values[1 << i] for i in range(problem.units)]) - zero
        additive = zero + h @ singles
        assert float((values - additive).abs().max()) > 1e-3


class TestSigmoidBeliefNet(ProblemContract):
    """Stacked layers: layer 1 ~ Bernoulli(sigm(b_0)), layer l+1 ~ Bernoulli(sigm(W_l h_l + b_l));
    the gradient is w.r.t. b_0, W_1, b_1, ... (buffers bias1, weight2, bias2, ...)."""

    specs = [("sigmoid-belief-net", {}),
             ("sigmoid-belief-net", {"widths": "3-2-2", "loss": "target", "hidden_weight": 0.5, "data_seed": 2}),
             ("sigmoid-belief-net", {"depth": 2, "width": 3, "hidden_weight": -1.0}),
             ("sigmoid-belief-net", {"widths": "5"})]

    def gradient_tensors(self, problem):
        tensors = [problem.bias1]
        for l in range(2, len(problem.widths) + 1):
            tensors += [getattr(problem, f"weight{l}"), getattr(problem, f"bias{l}")]
        return tensors

    def log_prob(self, problem, tensors, h):
        layers = h.split(list(problem.widths), dim=-1)
        logits = tensors[0].expand_as(layers[0])
        total = (layers[0] * F.logsigmoid(logits) + (1 - layers[0]) * F.logsigmoid(-logits)).sum(-1)
        for l in range(1, len(layers)):
            W, b = tensors[2 * l - 1], tensors[2 * l]
            logits = layers[l - 1] @ W.T + b
            total = total + (layers[l] * F.logsigmoid(logits) + (1 - layers[l]) * F.logsigmoid(-logits)).sum(-1)
        return total

    def test_sizes_and_scopes_follow_the_widths(self, spec):
        problem = build(spec)
        widths = problem.widths
        assert problem.units == sum(widths)
        assert problem.dim == widths[0] + sum(w * (p + 1) for p, w in zip(widths, widths[1:]))
        scopes = problem.scopes()
        layer_scopes = [scopes[f"layer{l + 1}"] for l in range(len(widths))]
        assert [s.start for s in layer_scopes[1:]] == [s.stop for s in layer_scopes[:-1]]
        assert layer_scopes[0].start == 0 and layer_scopes[-1].stop == problem.dim
        assert scopes["layer1.bias"] == scopes["layer1"] and "layer1.weight" not in scopes
        for l in range(2, len(widths) + 1):
            weight, bias = scopes[f"layer{l}.weight"], scopes[f"layer{l}.bias"]
            assert (weight.start, weight.stop, bias.stop) == (scopes[f"layer{l}"].start, bias.start,
                                                              scopes[f"layer{l}"].stop)
            assert weight.stop - weight.start == widths[l - 1] * widths[l - 2]

    def test_loss_by_hand(self, spec):
        import numpy as np

        problem = build(spec).to(torch.float64)
        h = all_configurations(problem.units, torch.float64)[:40].numpy()

        def term(l, x):
            if problem.loss_kind == "target":
                return ((x - getattr(problem, f"target{l}").numpy()) ** 2).sum()
            U, c, v, w = (getattr(problem, f"readout{l}_{k}").numpy() for k in "Ucvw")
            return np.tanh(U @ x + c) @ v + w @ x

        depth, bounds = len(problem.widths), np.cumsum((0,) + problem.widths)
        by_hand = [term(depth, row[bounds[-2]:]) + problem.hidden_weight * sum(
            term(l + 1, row[bounds[l]:bounds[l + 1]]) for l in range(depth - 1)) for row in h]
        torch.testing.assert_close(problem.loss(torch.from_numpy(h)), torch.tensor(by_hand, dtype=torch.float64),
                                   rtol=0, atol=1e-12)


class TestMlpProbe(ProblemContract):
    """An MLP's Bernoulli hidden layers at fixed weights on a fixed batch: units are laid out
    example-major (each example's layers side by side); the gradient is w.r.t. the hidden biases."""

    specs = [("mlp-probe", {}),
             ("mlp-probe", {"widths": "2-2-2", "batch": 2, "classes": 4, "inputs": 3, "data_seed": 3}),
             ("mlp-probe", {"widths": "5", "batch": 3, "classes": 2})]

    def gradient_tensors(self, problem):
        return [getattr(problem, f"bias{l}") for l in range(1, len(problem.widths) + 1)]

    def log_prob(self, problem, tensors, h):
        per_example = h.unflatten(-1, (problem.batch, problem.dim)).split(list(problem.widths), dim=-1)
        below, total = problem.x, 0
        for l, (h_l, bias) in enumerate(zip(per_example, tensors)):
            logits = below @ getattr(problem, f"weight{l + 1}").T + bias
            total = total + (h_l * F.logsigmoid(logits) + (1 - h_l) * F.logsigmoid(-logits)).sum((-1, -2))
            below = h_l
        return total

    def test_loss_by_hand(self, spec):
        problem = build(spec).to(torch.float64)
        h = all_configurations(problem.units, torch.float64)[::97][:8]
        for row in h:
            last = row.reshape(problem.batch, problem.dim)[:, problem.dim - problem.widths[-1]:]
            logits = last @ problem.readout_weight.T + problem.readout_bias
            by_hand = sum(torch.logsumexp(logits[b], 0) - logits[b, problem.y[b]] for b in range(problem.batch))
            assert float(problem.loss(row)) == pytest.approx(float(by_hand) / problem.batch, abs=1e-12)


class CategoricalContract(ProblemContract):
    """Independent K-way units h_i ~ Categorical(softmax(logits_i)), one-hot h (..., units, K); the
    gradient is w.r.t. ``logits`` (units, K), flattened."""

    def gradient_tensors(self, problem):
        return [problem.logits]

    def log_prob(self, problem, tensors, h):
        (logits,) = tensors
        return (h * F.log_softmax(logits, -1)).sum((-2, -1))

    def configurations(self, problem, dtype, device=None):
        return all_categories(problem.units, problem.categories, dtype, device)

    def event_shape(self, problem):
        return tuple(problem.logits.shape)

    def random_units(self, problem, lead, generator):
        index = torch.randint(0, problem.categories, (*lead, problem.units), generator=generator)
        return F.one_hot(index, problem.categories).float()

    def test_closed_form_matches_finite_differences_of_expected_loss(self, spec):
        problem = build(spec).to(torch.float64)
        base = problem.logits.detach().clone()
        step, fd = 1e-5, torch.zeros(problem.dim, dtype=torch.float64)
        for i in range(problem.dim):
            shift = torch.zeros(problem.dim, dtype=torch.float64)
            shift[i] = step
            problem.logits.copy_(base + shift.view_as(base))
            up = problem.expected_loss()
            problem.logits.copy_(base - shift.view_as(base))
            fd[i] = (up - problem.expected_loss()) / (2 * step)
        problem.logits.copy_(base)
        torch.testing.assert_close(problem.exact_gradient(), fd, rtol=1e-6, atol=1e-9)


class TestCategoricalTarget(CategoricalContract):
    specs = [("categorical-target", {}), ("categorical-target", {"units": 3, "K": 4, "t": 0.3, "logit": -1.5}),
             ("categorical-target", {"units": 2, "K": 2, "logit": 0.7})]


class TestPolynomialProgramming(CategoricalContract):
    specs = [("polynomial-programming", {"units": 5}), ("polynomial-programming", {"p": 1.5, "units": 4, "logit": 0.4}),
             ("polynomial-programming", {"p": 3.0, "units": 3, "K": 3, "t": 0.2, "logit": -0.6})]


CONTRACT_CLASSES = [TestBernoulliTarget, TestBernoulliQuadratic, TestBernoulliBlackbox, TestSigmoidBeliefNet,
                    TestMlpProbe, TestCategoricalTarget, TestPolynomialProgramming]
_COVERED = ({name for cls in CONTRACT_CLASSES for name, _ in cls.specs}
            | {"bernoulli-vae-probe", "categorical-vae-probe",  # tests/test_vae.py, tests/test_categorical_vae.py
               "sequence-bandit",  # tests/test_sequence.py
               "moe-router"})  # tests/test_moe.py


def _gradient_problem(name: str) -> bool:
    return not getattr(problems.PROBLEMS.entry(name).cls, "trains_model", False)


class TestOtherRegisteredProblems(BernoulliContract):
    """Default instances of registered Bernoulli gradient problems without a family class here
    (plugins found through entry points). Empty, and so skipped, when none is installed."""

    specs = [(name, {}) for name in problems.PROBLEMS.names() if name not in _COVERED
             and _gradient_problem(name) and issubclass(problems.PROBLEMS.entry(name).cls, BernoulliProblem)]


def test_every_builtin_problem_has_a_contract_class():
    """A new built-in gradient problem must come with a ProblemContract subclass that covers it."""
    covered = _COVERED
    builtin = {entry.name for entry in problems.PROBLEMS.entries()
               if entry.source == BUILTIN and _gradient_problem(entry.name)}
    missing = builtin - covered
    assert not missing, f"registered problems without a ProblemContract subclass: {sorted(missing)}"
    assert "sigmoid-belief-net-training" not in builtin  # training problems are not gradient problems
    for cls in CONTRACT_CLASSES:
        assert issubclass(cls, ProblemContract)


# -- parameter validation ---------------------------------------------------------------------

@pytest.mark.parametrize("name, params, fragment", [
    ("bernoulli-target", {"t": 1.5}, "t must be in [0, 1]"),
    ("bernoulli-target", {"t": -0.1}, "t must be in [0, 1]"),
    ("bernoulli-target", {"d": 0}, "d must be at least 1"),
    ("bernoulli-target", {"logit": float("inf")}, "logit must be a finite number"),  # the registry's check
    ("bernoulli-quadratic", {"d": 0}, "d must be at least 1"),
    ("bernoulli-blackbox", {"d": 21}, "d must be at least 1 and at most 20 (an integer): exact by enumeration"),
    ("bernoulli-blackbox", {"hidden": 0}, "hidden must be at least 1"),
    ("bernoulli-target", {"d": 2.5}, "d must be an integer"),
    ("bernoulli-target", {"t": "half"}, "t must be a number"),
], ids=["target-t-above-1", "target-t-negative", "target-d-0", "target-logit-inf", "quadratic-d-0",
        "blackbox-d-21", "blackbox-hidden-0", "target-d-not-int", "target-t-not-number"])
def test_bad_parameters(name, params, fragment):
    with pytest.raises(RegistryError) as info:
        problems.build_problem(name, params)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_constructor_errors_are_plain_value_errors():
    from problems.bernoulli import BernoulliTarget

    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        BernoulliTarget(t=2.0)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(RegistryError) as info:
        problems.build_problem("bernoulli-target", {"q": 1})
    message = str(info.value)
    assert "'q'" in message
    for valid in ("d", "t", "logit"):
        assert valid in message


def test_unknown_problem_suggests_close_match():
    with pytest.raises(RegistryError) as info:
        problems.build_problem("bernoulli-targt")
    message = str(info.value)
    assert "bernoulli-targt" in message
    assert "did you mean" in message and "bernoulli-target" in message.split("valid:")[0]


def test_unknown_problem_without_close_match_lists_valid_names():
    with pytest.raises(RegistryError) as info:
        problems.build_problem("zzz")
    message = str(info.value)
    assert "did you mean" not in message
    for name in problems.PROBLEMS.names():
        assert name in message


def test_integral_float_parameters_are_coerced():
    problem = problems.build_problem("bernoulli-quadratic", {"d": 3.0, "data_seed": 1})
    assert problem.d == 3 and isinstance(problem.d, int)


def test_resolved_params_round_trip():
    problem = problems.build_problem("bernoulli-target", {"d": 3, "t": 0.3, "logit": -1.5})
    params = problems.PROBLEMS.resolved_params(problem)
    assert params == {"d": 3, "t": 0.3, "logit": -1.5, "spread": 0.0}
    rebuilt = problems.build_problem("bernoulli-target", params)
    torch.testing.assert_close(rebuilt.exact_gradient(), problem.exact_gradient(), rtol=0, atol=0)


def test_enumeration_refuses_too_many_units():
    problem = problems.build_problem("bernoulli-quadratic", {"d": 21})
    with pytest.raises(ValueError, match="too many to enumerate"):
        problem.enumerate_gradient()
    # the closed form still works where enumeration cannot
    assert problem.exact_gradient().shape == (21,)
