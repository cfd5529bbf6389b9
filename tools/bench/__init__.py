"""The benchmarks, one module each, run from the repository root as ``python -m tools.bench.<name>``
(see README.md here): ``accuracy``, ``calibration``, ``ablation``, ``speed`` (with the ``pipeline``
and ``recipe`` benchmarks behind its ``--data-only`` and ``--recipe``), ``anchor``, ``text_encoder``
and ``cache``. What they share is in ``common``.
"""
