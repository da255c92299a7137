"""A small CNN image classifier, the feature extractor of strata's image quality measure.

It plays the part Inception-v3 plays for FID on natural images: its penultimate features
(``features``) are where generated and real images are compared, and its class decision is
how class-conditional samples are checked. It is small enough to train in seconds on CPU
on 8x8 digits and scales to larger images by pooling more often.
"""

from __future__ import annotations

from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """Conv stages of two 3x3 convolutions, with 2x2 max pooling between them while the map is
    larger than 4x4 (at most three times), an adaptive pool to 4x4, one hidden layer of
    ``feature_dim`` units (the features) and a linear head.

    Inputs are float (N, C, H, W) in [-1, 1], as image stores hold them. It knows nothing of
    stores or processes; :mod:`strata.runtime.diffusion.quality` trains, caches and applies it.
    """

    def __init__(
        self,
        channels: int,
        image_size: int | tuple[int, int],
        num_classes: int,
        *,
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        height, wide = (image_size, image_size) if isinstance(image_size, int) else image_size
        if channels < 1 or height < 1 or wide < 1:
            raise ValueError(f"ImageClassifier needs channels and image size >= 1, got {channels} and {image_size}")
        if num_classes < 2:
            raise ValueError(f"ImageClassifier needs at least two classes, got {num_classes}")
        self.input_shape = (int(channels), int(height), int(wide))
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.feature_dim = int(feature_dim)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()]

        layers, c, h, w = block(channels, width), width, height, wide
        for _ in range(3):  # halve the map (doubling channels) until it is at most 4x4
            if min(h, w) <= 4:
                break
            layers += [nn.MaxPool2d(2), *block(c, 2 * c)]
            c, h, w = 2 * c, h // 2, w // 2
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        self.body = nn.Sequential(*layers)  # (N, c * 16)
        self.hidden = nn.Sequential(nn.Linear(c * 16, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim): what the Frechet distance compares."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the classifier takes images of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        return self.hidden(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))

    def config(self) -> dict[str, int | list[int]]:
        """The constructor arguments, to rebuild the same network from saved weights."""
        return {
            "channels": self.input_shape[0],
            "image_size": [self.input_shape[1], self.input_shape[2]],
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    @classmethod
    def from_config(cls, config: dict) -> ImageClassifier:
        size = config["image_size"]
        return cls(
            int(config["channels"]),
            (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else int(size),
            int(config["num_classes"]),
            width=int(config["width"]),
            feature_dim=int(config["feature_dim"]),
        )

