"""The router of a set of decentralized diffusion experts (Decentralized Diffusion Models,
McAllister et al., 2025): a small classifier that looks at a noisy image x_t and its timestep
t (and, for class-conditional sets, the class label y) and predicts which data cluster the
clean image x0 came from.

At sampling time its probabilities pick (top-1) or weigh the experts, each trained on one
cluster. Near t = T the input is almost pure noise and the best it can do is the cluster
prior p(k | y); near t = 0 it sees the image and should be nearly always right.

Why the label: for class-conditional sampling the mixture of expert scores is exact with
weights p(k | x_t, y) (Bayes over the clusters of the class asked for). Without y the router
can only say p(k | x_t), which at large t is the overall cluster prior, so a "3" may be sent
to an expert whose cluster holds no 3s. Labels are dropped in training (the null label, as for
classifier-free guidance), so the same router also gives p(k | x_t) for unconditional passes.

Shape: x_t (N, C, H, W) -> a 3x3 convolution to ``hidden`` channels, shifted per sample by an
embedding of (t, y) -> a stride-2 convolution -> average-pooled to at most 4 x 4 -> an MLP
(whose hidden layer also gets the embedding) -> (N, num_clusters) logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.models.diffusion.layered import LabelEmbedding, TimestepEmbedding


class Router(nn.Module):
    """Logits over ``num_clusters`` clusters from (x_t, t), and y when ``num_classes`` > 0
    (label ``num_classes`` or ``y=None`` meaning "no class")."""

    def __init__(self, *, image_shape: tuple[int, int, int], num_clusters: int, hidden: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        if num_clusters < 1 or hidden < 1 or num_classes < 0:
            raise ValueError(
                f"a router needs num_clusters >= 1, hidden >= 1 and num_classes >= 0, got {num_clusters}, {hidden}, {num_classes}"
            )
        channels, height, width = image_shape
        self.image_shape = (int(channels), int(height), int(width))
        self.num_clusters = num_clusters
        self.num_classes = num_classes
        self.null_label = num_classes
        self.time = TimestepEmbedding(hidden)
        self.label = LabelEmbedding(num_classes, hidden) if num_classes else None
        self.stem = nn.Conv2d(channels, hidden, 3, padding=1)
        self.down = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)
        self.pool = (min(4, (height + 1) // 2), min(4, (width + 1) // 2))
        self.fc = nn.Linear(hidden * self.pool[0] * self.pool[1], hidden)
        self.fc_cond = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_clusters)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if tuple(x_t.shape[1:]) != self.image_shape:
            raise ValueError(f"the router expects images of shape (N, {', '.join(map(str, self.image_shape))}), got {tuple(x_t.shape)}")
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().expand(n)
        c = self.time(t)  # (N, hidden)
        if self.label is not None:
            y = torch.full((n,), self.null_label, device=x_t.device) if y is None else y
            c = c + self.label(y.long())
        h = F.silu(self.stem(x_t) + c[:, :, None, None])  # (N, hidden, H, W)
        h = F.silu(self.down(h))  # (N, hidden, ceil(H/2), ceil(W/2))
        h = F.adaptive_avg_pool2d(h, self.pool).flatten(1)  # (N, hidden * pool cells)
        h = F.silu(self.fc(h) + self.fc_cond(F.silu(c)))  # (N, hidden)
        return self.head(h)  # (N, num_clusters)


MIXTURES = ("top1", "weighted")


class ExpertMixture(nn.Module):
    """Experts behind a router, callable like one denoiser: ``model(x_t, t, y)`` with the
    ``image_shape`` and ``null_label`` the samplers need.

    - ``top1``: each sample goes to the expert the router ranks first (re-decided at every
      step; the DDM paper found this best);
    - ``weighted``: every expert sees every sample and their outputs are averaged with the
      router's probabilities as weights.

    A router with labels is given the same y as the experts (the null label on the
    unconditional pass of classifier-free guidance), so each pass is routed by p(k | x_t, y)
    or p(k | x_t) respectively. ``routed`` counts the samples each expert was given (top1)
    or its summed weight (weighted), a check that the router uses the whole set.
    """

    def __init__(self, experts: list[nn.Module], router: Router, *, mode: str = "top1") -> None:
        super().__init__()
        if mode not in MIXTURES:
            raise ValueError(f"mixture must be one of {', '.join(MIXTURES)}, got '{mode}'")
        if len(experts) != router.num_clusters:
            raise ValueError(f"{len(experts)} experts but the router was trained for {router.num_clusters} clusters")
        shapes = {tuple(e.image_shape) for e in experts}
        labels = {int(e.null_label) for e in experts}
        if len(shapes) != 1 or len(labels) != 1 or shapes != {tuple(router.image_shape)}:
            raise ValueError(
                f"experts and router must take one image shape and label set; got shapes {sorted(shapes)}, "
                f"router {router.image_shape}, null labels {sorted(labels)}"
            )
        if router.num_classes and router.null_label != next(iter(labels)):
            raise ValueError(f"the router knows {router.num_classes} classes, the experts {next(iter(labels))}")
        self.experts = nn.ModuleList(experts)
        self.router = router
        self.mode = mode
        self.image_shape = shapes.pop()
        self.null_label = labels.pop()
        self.register_buffer("routed", torch.zeros(len(experts), dtype=torch.float64), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])
        probs = self.router(x_t, t, y if self.router.num_classes else None).float().softmax(-1)  # (N, k)
        if self.mode == "weighted":
            self.routed += probs.sum(0).to(self.routed)
            out = torch.zeros_like(x_t)
            for e, expert in enumerate(self.experts):
                out = out + probs[:, e].view(-1, 1, 1, 1).to(x_t.dtype) * expert(x_t, t, y)
            return out
        choice = probs.argmax(-1)  # (N,)
        self.routed += torch.bincount(choice, minlength=len(self.experts)).to(self.routed)
        out = torch.empty_like(x_t)
        for e in choice.unique().tolist():
            rows = (choice == e).nonzero().squeeze(1)
            out[rows] = self.experts[e](x_t[rows], t[rows], None if y is None else y[rows]).to(x_t.dtype)
        return out
