"""A case: one variant configuration at one device, dtype, mode, masking and shape."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from harness.oracle import Shape
from harness.specs import VariantSpec

MODES = ("fwd", "bwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    """Everything that defines one measurement; ``key()`` identifies it across runs."""

    spec: VariantSpec
    device: str
    dtype: str
    mode: str
    causal: bool
    b: int
    h: int
    nq: int
    nk: int
    d: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("b", "h", "nq", "nk", "d"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")

    @property
    def shape(self) -> Shape:
        """The problem size as an oracle Shape."""
        return Shape(self.b, self.h, self.nq, self.nk, self.d)

    @property
    def backward(self) -> bool:
        """Whether the mode includes a backward pass."""
        return self.mode != "fwd"

    def config_dict(self) -> dict[str, object]:
        """The variant's configuration as plain data."""
        return dataclasses.asdict(self.spec.cfg)

    def key(self) -> str:
        """A stable identity: variant, its config, device, dtype, mode, causal and shapes."""
        parts = {
            "variant": self.spec.name, "config": self.config_dict(), "device": self.device,
            "dtype": self.dtype, "mode": self.mode, "causal": self.causal,
            "b": self.b, "h": self.h, "nq": self.nq, "nk": self.nk, "d": self.d,
        }
        return json.dumps(parts, sort_keys=True, separators=(",", ":"))
