"""The fault suite's fixtures (``test_fault_suite.py``: ``make faults``) and its summary:
the reference runs' times and, as the last line,
``faults bad_inputs_refused=n/m kills_survived=n/m concurrent_safe=n/m``."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.synthetic import write_synthetic
from tests.system.faults import KINDS, Steps, summary, uninterrupted

TALLY = "hespot-fault-tally"


class FaultTally:
    """Each fault case's outcome under its kind (the ``faults`` marker's argument)."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[str, bool]] = {}  # node id -> (kind, passed)
        self.runner: Steps | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        kind = dict(report.user_properties).get("fault_kind")
        if kind is None or (report.skipped and not report.failed):
            return
        if report.when == "call" or report.failed:
            passed = self.cases.get(report.nodeid, (kind, True))[1]
            self.cases[report.nodeid] = (kind, passed and not report.failed)

    def counts(self) -> dict[str, tuple[int, int]]:
        """kind -> (cases passed, cases run)."""
        return {k: (sum(ok for kind, ok in self.cases.values() if kind == k),
                    sum(kind == k for kind, _ in self.cases.values())) for k in KINDS}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.runner is not None and self.runner.seconds:
            terminalreporter.write_line(uninterrupted(self.runner))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session):
        """After pytest's own last line: the summary line, when fault cases ran."""
        result = yield
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if self.cases and reporter is not None:
            reporter.write_line(summary(self.counts()))
        return result


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(TALLY):
        config.pluginmanager.register(FaultTally(), TALLY)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each fault case carries its kind to its reports (for the tally)."""
    for item in items:
        marker = item.get_closest_marker("faults")
        if marker is not None and marker.args:
            item.user_properties.append(("fault_kind", marker.args[0]))


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every fault case writes under."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def fault_base(fault_root: Path) -> Path:
    """The synthetic canonical file the cases run on (theirs: read-only)."""
    return write_synthetic(fault_root / "synthetic.h5")


@pytest.fixture(scope="session")
def fault_steps(fault_root: Path, fault_base: Path, pytestconfig: pytest.Config) -> Steps:
    """The commands killed; each case runs the uninterrupted references it needs first."""
    runner = Steps(fault_root, fault_base, ())
    pytestconfig.pluginmanager.get_plugin(TALLY).runner = runner
    return runner
