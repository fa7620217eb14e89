"""The application layer: one package per command of ``lit-sr`` (``python -m lit_sr``).

A job is what a user runs: its config, the orchestration of a run and the files it writes
(``train`` is LightningCLI's fit/validate/test/predict; ``evaluate``, ``evaluate_refsr``,
``robust``, ``defend``, ``study`` and ``data`` are reports and tools). Each job's ``cli.main(argv)``
is dispatched by :mod:`lit_sr.__main__`. The library (the rest of :mod:`lit_sr`) never imports a
job; a job may import the library, ``callbacks`` and ``datamodules``.
"""
