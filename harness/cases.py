"""A case: one variant configuration at one device, dtype, mode, masking and shape."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.specs import VariantSpec
from harness.vocab import BACKWARD_MODES, DECODE, MODES, case_key, compiled_label
from variants.contract import Shape


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
    compile: bool = False  # run the variant through torch.compile (Supports.compile)
    new_tokens: int = 0  # decode: tokens per step after a cached context of nq = nk = N

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if (self.mode == DECODE) != (self.new_tokens >= 1):
            raise ValueError(f"new_tokens must be >= 1 for mode decode and 0 otherwise, got "
                             f"{self.new_tokens!r} for mode {self.mode!r}")
        if self.mode == DECODE and not (self.causal and self.nq == self.nk):
            raise ValueError("a decode case is causal with nq == nk (the cached context)")
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
        return self.mode in BACKWARD_MODES

    @property
    def variant(self) -> str:
        """The variant's registry name."""
        return self.spec.name

    @property
    def label(self) -> str:
        """The spec as written (``sdpa@flash``), ``+compile`` when compiled: what tables and
        legends show."""
        return compiled_label(self.spec.label, self.compile)

    @property
    def config(self) -> dict[str, Any]:
        """The variant's configuration as plain data."""
        return dataclasses.asdict(self.spec.cfg)

    def config_dict(self) -> dict[str, Any]:
        """The variant's configuration as plain data (same as ``config``)."""
        return self.config

    def key(self) -> str:
        """A stable identity across runs (``harness.vocab.case_key``)."""
        return case_key(self)
