import torch.nn as nn


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout (the transformer feed-forward block)."""

    def __init__(self, dim, hidden_dim=None, out_dim=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        hidden_dim = hidden_dim or dim * 4
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
