import os

# Pyro's argument validation is on in the tests (off by default in training)
os.environ.setdefault("ZOO_VALIDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def eight_schools_data():
    import zoo

    return zoo.create("eight_schools").default_data()


@pytest.fixture(autouse=True)
def _record_sbc_power(request, caplog):
    """Keep each SBC run's verdict and power with the test's report, for the summary."""
    import logging

    with caplog.at_level(logging.INFO, logger="inference.diagnostics.sbc"):
        yield
    for record in caplog.get_records("call"):
        if record.name == "inference.diagnostics.sbc":
            request.node.user_properties.append(("sbc", record.getMessage()))


def pytest_terminal_summary(terminalreporter):
    """Print the power of every SBC check that ran (pytest -q hides test output)."""
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"  # properties added after the call
        for key, value in getattr(report, "user_properties", ())
        if key == "sbc"
    ]
    if lines:
        terminalreporter.section("SBC checks: verdict and power")
        for line in sorted(lines):
            terminalreporter.write_line(line)
