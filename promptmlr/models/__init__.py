"""Methods that score C classes from frozen CLIP features, resolved by name (``--method``).

Importing this package registers every method: ``zeroshot``, ``linear``, ``dualcoop``,
``positivecoop``, ``sst``, ``dsrb``, ``clsl``, ``sarl`` and ``promptmlr``.
"""

from promptmlr.models import clsl, coop, decoupled, dsrb, linear, sst, zeroshot  # noqa: F401  (registration)
from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.models.factory import ModelConfig, build_method, list_methods, method_options, register_method

__all__ = ["MethodOutput", "ModelConfig", "MultiLabelMethod", "build_method", "list_methods", "method_options",
           "register_method"]
