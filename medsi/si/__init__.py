"""The selective-inference engine: exact p-values for regions found by a piecewise-linear model.

Domain-free: it knows images as arrays and models as torch modules, nothing of MRI or DICOM.
"""

from medsi.si.baselines import bonferroni_p_value, permutation_p_value
from medsi.si.covariance import Covariance, Dense, Diagonal, Isotropic, Stationary
from medsi.si.estimate import CovarianceKind, estimate_covariance
from medsi.si.events import check_region, connected_regions, event_flags, outer_boundary
from medsi.si.line import LineEvaluator, LinePieces
from medsi.si.linearity import (
    DecisionRecorder,
    check_piecewise_linear,
    register_piecewise_linear_module,
)
from medsi.si.options import Alternative, Event, Termination
from medsi.si.parallel import DaskLineEvaluator, ProcessLineEvaluator
from medsi.si.search import SearchOutcome, SearchSettings, parametric_search
from medsi.si.selective import RegionLine, SelectiveResult, SelectiveTest
from medsi.si.truncnorm import (
    log_selective_p_value,
    log_standard_normal_mass,
    naive_p_value,
    selective_p_value,
    selective_p_value_bounds,
    truncated_normal_log_cdf,
)

__all__ = [
    "Alternative",
    "Covariance",
    "CovarianceKind",
    "DaskLineEvaluator",
    "DecisionRecorder",
    "Dense",
    "Diagonal",
    "Event",
    "Isotropic",
    "LineEvaluator",
    "LinePieces",
    "ProcessLineEvaluator",
    "SearchOutcome",
    "SearchSettings",
    "SelectiveResult",
    "RegionLine",
    "SelectiveTest",
    "Stationary",
    "Termination",
    "bonferroni_p_value",
    "check_piecewise_linear",
    "check_region",
    "connected_regions",
    "estimate_covariance",
    "event_flags",
    "log_selective_p_value",
    "log_standard_normal_mass",
    "naive_p_value",
    "outer_boundary",
    "parametric_search",
    "permutation_p_value",
    "register_piecewise_linear_module",
    "selective_p_value",
    "selective_p_value_bounds",
    "truncated_normal_log_cdf",
]
