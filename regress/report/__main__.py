"""``python -m regress.report``: see :mod:`regress.report.page`."""

from regress.report.page import main

if __name__ == "__main__":
    raise SystemExit(main())
