"""Sampling from an expert set: how the router's probabilities turn k experts into one denoiser.

- ``top1``: each sample to the expert the router ranks first, re-decided at every step (the
  Decentralized Diffusion Models paper's best);
- ``top2``: the two experts it ranks highest, their outputs averaged with the two probabilities
  renormalised (better than the full ensemble in a 2026 follow-up);
- ``weighted``: every expert on every sample, weighted by all k probabilities.

Classifier-free guidance runs the conditional and the unconditional pass as one batch of 2N
(:func:`strata.models.diffusion.sampling.guided_prediction`). Routed pass by pass, the two halves
of a sample can land on different experts, and the guidance direction ``cond - uncond`` is then
the difference of two different networks, not a class direction. ``guidance_routing``:

- ``per_pass`` (default): each pass routed on its own (the unconditional by p(k | x_t, t));
- ``per_expert``: a guided batch (second half the same x_t with the null label) is routed by the
  conditional pass, p(k | x_t, t, y), and each chosen expert runs both passes, so guidance
  happens inside an expert.

Measured on digits (docs/benchmarks.md, experts section), per expert was not better than per pass
(class match 0.616 against 0.654, FID 80.9 against 76.5 for k = 4 encoder clusters; 0.581 against
0.600 and 86.4 against 87.6 for pixel clusters; one seed), so per pass stays the default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from strata.models.diffusion.router import ExpertMixture, Router

MIXTURES = ("top1", "top2", "weighted")
GUIDANCE_ROUTINGS = ("per_expert", "per_pass")


class RoutedMixture(ExpertMixture):
    """:class:`ExpertMixture` with top-2 routing and guidance routed per expert; ``routed``
    counts each expert's share of the (conditional) routing weight."""

    def __init__(self, experts: list[nn.Module], router: Router, *, mode: str = "top1",
                 guidance_routing: str = "per_pass") -> None:
        if mode not in MIXTURES:
            raise ValueError(f"mixture must be one of {', '.join(MIXTURES)}, got '{mode}'")
        if guidance_routing not in GUIDANCE_ROUTINGS:
            raise ValueError(f"guidance routing must be one of {', '.join(GUIDANCE_ROUTINGS)}, got '{guidance_routing}'")
        super().__init__(experts, router, mode="weighted" if mode == "weighted" else "top1")
        self.mode = mode
        self.guidance_routing = guidance_routing

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])
        routed_rows = len(x_t)
        if self.guidance_routing == "per_expert" and self._is_guided_batch(x_t, y):
            routed_rows = len(x_t) // 2
        half = slice(0, routed_rows)
        cond_y = None if y is None or not self.router.num_classes else y[half]
        probs = self.router(x_t[half], t[half], cond_y).float().softmax(-1)  # (rows, k)
        if routed_rows < len(x_t):
            probs = torch.cat([probs, probs])  # both passes of a sample to the same experts
        weights = self._weights(probs)
        self.routed += weights[:routed_rows].sum(0).to(self.routed)
        out = torch.zeros_like(x_t)
        for e in (weights.sum(0) > 0).nonzero().squeeze(1).tolist():
            rows = (weights[:, e] > 0).nonzero().squeeze(1)
            prediction = self.experts[e](x_t[rows], t[rows], None if y is None else y[rows]).to(x_t.dtype)
            out[rows] += weights[rows, e].view(-1, 1, 1, 1).to(x_t.dtype) * prediction
        return out

    def _weights(self, probs: Tensor) -> Tensor:
        """(rows, k) weights of the experts, zero for experts a row does not run."""
        if self.mode == "weighted":
            return probs
        top = 1 if self.mode == "top1" else min(2, probs.shape[1])
        values, index = probs.topk(top, dim=1)
        return torch.zeros_like(probs).scatter(1, index, values / values.sum(1, keepdim=True))

    def _is_guided_batch(self, x_t: Tensor, y: Tensor | None) -> bool:
        """Whether this is guided_prediction's batch: [x, x] with [y, null]."""
        if y is None or len(x_t) % 2:
            return False
        n = len(x_t) // 2
        return bool((y[n:] == self.null_label).all()) and bool((y[:n] != self.null_label).any()) and torch.equal(x_t[:n], x_t[n:])
