"""Example stochgrad-bench plugin: one estimator and one problem, registered via entry points."""
from example_bench_plugin.estimators import ReinforceConstant
from example_bench_plugin.problems import BernoulliLinear

__all__ = ["BernoulliLinear", "ReinforceConstant"]
