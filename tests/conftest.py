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
