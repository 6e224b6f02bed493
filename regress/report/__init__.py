"""The HTML report page: ``python -m regress.report`` (``make report``) writes
``OUT/report/index.html`` and its figures from whatever exists under OUT.

Modules (nothing runs at import; none imports torch):

- :mod:`~regress.report.config`: :class:`ReportConfig`, the settings.
- :mod:`~regress.report.inputs`: :class:`Inputs` (what the sections read, opened once),
  :class:`Absent` and the :class:`Section` record.
- :mod:`~regress.report.data_sections`: slides, background, abundance, maps,
  correlation, PCA.
- :mod:`~regress.report.result_sections`: LOSO table, per-type scores, held-out and test
  maps, ablation (tables from :mod:`regress.tables`).
- :mod:`~regress.report.page`: the page, ``build_report`` and the command line ``main``.
- :mod:`~regress.report.plots`: figures and thumbnails (matplotlib, Agg).
- :mod:`~regress.report.browser`: the headless Chromium check and screenshot.
"""
