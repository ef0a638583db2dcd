"""An exponential moving average of the adapter weights, saved as NAME-NN-ema.safetensors.

decay is warmed up as min(decay, (1 + n) / (10 + n)) after n updates, so the average is not dominated
by the initial weights in a short run. The shadows may live in CPU memory (`ema.on_cpu`).
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, params: list[torch.Tensor], decay: float, device: torch.device | str) -> None:
        self.params = list(params)
        self.decay = decay
        self.shadows = [p.detach().to(device, torch.float32).clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadows, self.params):
            s.mul_(d).add_(p.detach().to(s.device, torch.float32), alpha=1 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadows": [s.cpu() for s in self.shadows], "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for s, v in zip(self.shadows, state["shadows"]):
            s.copy_(v)
        self.updates = int(state["updates"])
