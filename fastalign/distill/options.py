"""The trainer's option vocabulary and loss weights, importable without torch (the
command line builds its parser from these, so ``fastalign --help`` stays fast)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Union

MODELS = ("gcn", "sage", "gat")
RESIDUALS = ("none", "plain", "initial", "gcnii")
ALIGNS = ("ahead", "behind", "one-to-one", "none")
MODES = ("alternating", "simultaneous")
BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")
WD_SCOPES = ("all", "first")
LR_SCHEDULES = ("constant", "cosine")
FEATURE_PAIRS = ("all", "hidden")
# the similarity kernels of fastalign's ops (fastalign.validation.KERNELS; a test keeps
# the two equal)
KERNELS = ("l1", "rbf", "linear", "poly", "cosine")
AUTO_SIGMA_KERNELS = ("l1", "rbf")  # fastalign.validation.AUTO_SIGMA_KERNELS (kept equal by a test)


def device_name(text: str) -> str:
    """cpu, cuda or cuda:<index>; anything else is refused here, before any data loads."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda or cuda:<index>")
    return text


@dataclass
class LossWeights:
    structure: float = 1.0
    feature: float = 1.0
    deep_supervision: float = 0.5
    kernel: str = "l1"
    # the l1 / rbf scale; "auto": each layer's own mean edge distance (fastalign.ops.edge_scale)
    sigma: Union[float, str, None] = 100.0
    tau: float = 1.0
    # which aligned pairs get a feature hint: "all" of them, or only "hidden" ones (both
    # layers hidden embeddings: no hint to or from the logits)
    feature_pairs: str = "all"

    def __post_init__(self):
        for name in ("structure", "feature", "deep_supervision"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} weight must be a non-negative number, got {v!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if isinstance(self.sigma, str):
            if self.sigma != "auto" or self.kernel not in AUTO_SIGMA_KERNELS:
                raise ValueError(f"sigma must be a positive number, or 'auto' with the "
                                 f"{' or '.join(AUTO_SIGMA_KERNELS)} kernel; got {self.sigma!r} "
                                 f"with {self.kernel!r}")
        elif self.sigma is not None and not (isinstance(self.sigma, (int, float))
                                             and not isinstance(self.sigma, bool) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive number or 'auto', got {self.sigma!r}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.feature_pairs not in FEATURE_PAIRS:
            raise ValueError(f"feature_pairs must be one of {FEATURE_PAIRS}, got {self.feature_pairs!r}")
