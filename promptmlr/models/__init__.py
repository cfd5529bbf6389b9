"""Methods that score C classes from frozen CLIP features, resolved by name (``--method``).

One module per method (``zeroshot``, ``linear``, ``dualcoop``, ``positivecoop``, ``sst``, ``dsrb``,
``clsl``, ``sarl``, ``promptmlr``), each registering itself in :data:`METHODS`, which imports them
the first time a name is looked up.
"""

from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.models.factory import METHODS, ModelConfig, build_method, list_methods, method_options, register_method

__all__ = ["METHODS", "MethodOutput", "ModelConfig", "MultiLabelMethod", "build_method", "list_methods",
           "method_options", "register_method"]
