"""inference.online.sliding_window: windows in order, the model frozen, the guide fitted."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.online import sliding_window


class Toy(nn.Module):
    """x_t = k * m_t + noise with a network weight k the windows must not move."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2.0))

    def forward(self, batch):
        x = batch["x"]
        with pyro.plate("data", batch.size, subsample=batch.index):
            m = pyro.sample("m", dist.Normal(0.0, 10.0).expand(x.shape[1:]).to_event(1))
            loc = self.k * m + batch["offset"][:, None]
            pyro.sample("x", dist.Normal(loc, 0.05).to_event(1), obs=x)


class WindowGuide(nn.Module):
    def __init__(self, rows: int, window: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(rows, window))

    def forward(self, batch):
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("m", dist.Delta(self.loc[batch.index]).to_event(1))


def test_windows_slide_in_order_with_the_model_frozen():
    torch.manual_seed(0)
    x = torch.randn(3, 12)
    model = Toy()
    seen = []

    def new_window(end, previous):
        seen.append((end, previous))
        return WindowGuide(3, 4), {"offset": torch.full((3,), 1.0)}

    out = []
    for end, guide, piece in sliding_window(
        model, {"x": x}, new_window, window=4, steps=150, lr=0.1, start=5, stop=8
    ):
        out.append(end)
        assert torch.equal(piece["x"], x[:, end - 4 : end])
        # the guide alone was fitted: m = (x - offset) / k with the frozen k = 2
        assert torch.allclose(guide.loc, (piece["x"] - 1.0) / 2.0, atol=0.05)
    assert out == [5, 6, 7, 8]
    assert seen[0][1] is None and all(prev is not None for _, prev in seen[1:])
    assert float(model.k.detach()) == 2.0 and model.k.grad is None and model.k.requires_grad


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 13}, "window must be an integer in 1..12"),
        ({"window": 4, "steps": 0}, "steps must be a positive integer"),
        ({"window": 4, "start": 2}, "windows must end within 4..12"),
    ],
)
def test_bad_windows_are_refused(kwargs, message):
    options = {"steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        next(sliding_window(Toy(), {"x": torch.zeros(2, 12)}, lambda e, p: None, **options))
