"""torch modules of the compressed model."""
import torch


class LowRank(torch.nn.Module):
    """y = b(a(x)): a truncated-SVD linear layer as two plain linears (packable like any other)."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.a = torch.nn.Linear(in_features, rank, bias=False, device=device)
        self.b = torch.nn.Linear(rank, out_features, bias=False, device=device)

    def forward(self, x):
        return self.b(self.a(x))
