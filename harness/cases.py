"""A case: one variant configuration at one device, dtype, mode, masking and shape."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.ragged import FORMS as RAGGED_FORMS
from harness.ragged import lengths as ragged_lengths
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
    kv_heads: int = 0  # grouped queries: k, v heads (h a multiple of it); 0: h of them
    ragged: str = ""  # ragged batch: how lengths are drawn (harness/ragged.py); "": equal
    ragged_form: str = ""  # ragged batch: padded or packed
    dv: int = 0  # the value head dim when it differs from d (0: d)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if (self.mode == DECODE) != (self.new_tokens >= 1):
            raise ValueError(f"new_tokens must be >= 1 for mode decode and 0 otherwise, got "
                             f"{self.new_tokens!r} for mode {self.mode!r}")
        if self.kv_heads and (self.kv_heads >= self.h or self.h % self.kv_heads):
            raise ValueError(f"kv_heads must divide h={self.h} and be below it (0: as many as "
                             f"h), got {self.kv_heads!r}")
        if self.ragged:
            ragged_lengths(self.ragged, self.b, self.nq, 0)  # ValueError: what is allowed
            if self.ragged_form not in RAGGED_FORMS or self.mode == DECODE or self.nq != self.nk:
                raise ValueError(f"a ragged case takes ragged_form in {list(RAGGED_FORMS)}, a "
                                 f"prefill mode and nq == nk; got {self.ragged_form!r}, "
                                 f"{self.mode!r}")
        elif self.ragged_form:
            raise ValueError(f"ragged_form {self.ragged_form!r} needs ragged lengths")
        if self.mode == DECODE and not (self.causal and self.nq == self.nk):
            raise ValueError("a decode case is causal with nq == nk (the cached context)")
        for name in ("b", "h", "nq", "nk", "d"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.dv < 0 or self.dv == self.d:
            raise ValueError(f"dv must be a positive int other than d={self.d} (0: d), got "
                             f"{self.dv!r}")

    @property
    def shape(self) -> Shape:
        """The problem size as an oracle Shape."""
        return Shape(self.b, self.h, self.nq, self.nk, self.d, self.kv_heads, self.dv)

    @property
    def call_shape(self) -> Shape:
        """The shape one timed call attends: the case's own, or for decode one step's (t new
        queries against N + t keys)."""
        if self.mode != DECODE:
            return self.shape
        return Shape(self.b, self.h, self.new_tokens, self.nk + self.new_tokens, self.d,
                     self.kv_heads, self.dv)

    @property
    def lengths(self) -> tuple[int, ...]:
        """A ragged batch's B sequence lengths (drawn from the identity alone: seed 0); the
        padded length N for each sequence otherwise."""
        return ragged_lengths(self.ragged, self.b, self.nq, 0) if self.ragged else (
            (self.nq,) * self.b)

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
