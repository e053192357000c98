"""KD methods, one module per method (base.py is the contract, _shared.py the loss code several methods
share); importing this package registers them all in METHODS."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
