"""medxai: counterfactual explanations of black-box image classifiers.

The package root holds only what every method shares: the method registry (``registry``), the typed
result (``explanation``), what is explained (``targets``), config loading (``config``), the rules for
code named in a config (``trust``), the progress-callback type (``progress``) and the phantom arrays
(``data``). Everything else lives in a sub-package by kind: ``transforms``, ``networks``,
``diffusion``, ``explainers``, ``metrics``, ``phantoms``, ``training``. medxai never imports dicom_io
or pipelines; pipelines/ joins the two. The import rules: docs/development.md, checked by
tests/test_import_rules.py.
"""

__version__ = "0.1.0"
