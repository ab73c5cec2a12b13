"""``measure(case) -> Row``: time, memory, FLOPs against the measured roof, and agreement.

Order per case: availability; for a compiled case (``compile=true``) the compile itself,
cold and with warm caches, and one profiled call saying what ran; the oracle at the case's
shape (or a smaller one when the float64 reference would be too big, named in
``check_shape``); timing with inputs created beforehand; then peak memory in a separate pass
(the profiler slows what it watches).
Failures we mean to record become rows: ``unavailable`` (the variant's reason, or
``Unavailable`` raised for these inputs), ``oom`` (CUDA or CPU allocator out of memory) and
``error`` (any other exception from the variant, with the last traceback lines). A case whose
oracle check disagrees is still timed and carries status ``mismatch``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from harness.allocator import in_effect
from harness.cases import Case
from harness.compiled import CompiledVariant, compile_settings, compile_timings, compiled_variant
from harness.config import MeasureSettings
from harness.decode import check_decode, step_call, step_io_bytes
from harness.flops import current_roof, flops_convention, mode_flops
from harness.memory import MIB, peak_bytes
from harness.oracle import Agreement, Shape, check_agreement, make_inputs, reduced_heads
from harness.ragged import packed as ragged_packed
from harness.ragged import padded as ragged_padded
from harness.ragged import padded_reason
from harness.ragged import scaled as ragged_scaled
from harness.ragged import waste as ragged_waste
from harness.roofline import roofline_fields, traffic_fields
from harness.rows import Row
from harness.timing import Attention, cuda_time, l2_flusher, time_callable, timed_callable
from harness.vocab import DECODE, DECODE_BYTES, LATER_IDENTITY, Status
from variants.contract import DTYPES, Unavailable, Variant

MEMORY_DEVICES = ("cpu", "cuda")  # where harness/memory.py can measure peaks
CPU_OOM_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors from the CUDA or the CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in CPU_OOM_MARKERS)


def check_shape(case: Case, max_scores: int) -> Shape:
    """The case's shape if its float64 reference is affordable, else a smaller one."""
    shape = case.shape
    if shape.b * shape.h * shape.nq * shape.nk <= max_scores:
        return shape
    h, hkv = reduced_heads(shape)
    if case.ragged:  # keep every sequence of the batch, shorter
        n = max(1, int(math.sqrt(max_scores / (shape.b * h))))
        return Shape(shape.b, h, n, n, shape.d, hkv, shape.dv)
    factor = min(1.0, math.sqrt(max_scores / (h * shape.nq * shape.nk)))
    nq, nk = max(1, int(shape.nq * factor)), max(1, int(shape.nk * factor))
    return Shape(1, h, nq, nk, shape.d, hkv, shape.dv)


def base_row(case: Case) -> Row:
    """A row carrying only the case's identity (status filled in by the caller)."""
    defaults = dataclasses.asdict(case.spec.variant.config_cls())
    return Row(
        key=case.key(), variant=case.variant, label=case.label, config=case.config,
        device=case.device, dtype=case.dtype, mode=case.mode, causal=case.causal,
        b=case.b, h=case.h, nq=case.nq, nk=case.nk, d=case.d,
        **{name: getattr(case, name) for name in LATER_IDENTITY},  # compile, decode, GQA, ...
        status=Status.OK,
        extra={"definition": case.spec.variant.definition(case.spec.cfg),
               "config_diff": {k: v for k, v in case.config.items() if defaults.get(k) != v},
               "flops_convention": flops_convention(case.spec.variant.computes(case.spec.cfg),
                                                    case.causal)},
    )


def _agreement_fields(agreement: Agreement, shape: Shape) -> dict[str, Any]:
    worst = agreement.worst()
    return {
        "check_ok": agreement.ok, "check_shape": shape.label(), "check_tensor": worst.tensor,
        "check_max_abs": worst.max_abs, "check_max_rel": worst.max_rel,
        "check_allowed": worst.allowed, "err_vs_softmax": agreement.err_vs_softmax,
    }


def _check(case: Case, s: MeasureSettings, variant: Variant | CompiledVariant) -> dict[str, Any]:
    """Run the oracle on what the case runs (gradients too when the mode has a backward)."""
    shape = check_shape(case, s.check_max_scores)
    ragged = None
    if case.ragged:  # the same B lengths, scaled to the check's N
        ragged = (ragged_scaled(case.lengths, case.nq, shape.nq), case.ragged_form)
    agreement = check_agreement(
        variant, case.spec.cfg, shape, device=case.device, dtype=DTYPES[case.dtype],
        causal=case.causal, backward=case.backward and case.spec.variant.supports.backward,
        seed=s.seed, ragged=ragged,
    )
    return _agreement_fields(agreement, shape)


class WrongOutput(RuntimeError):
    """A variant returned something other than a (B, H, Nq, Dv) tensor of the input dtype."""


def _attention_fn(case: Case, variant: Variant | CompiledVariant) -> Attention:
    """The variant's attention, its output's shape and dtype checked on every call."""
    cfg, causal = case.spec.cfg, case.causal

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = variant.attention(q, k, v, causal=causal, scale=None, cfg=cfg)
        want = (*q.shape[:-1], v.shape[-1])  # (B, H, Nq, Dv)
        if not isinstance(out, torch.Tensor) or out.shape != want or out.dtype != q.dtype:
            got = (f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor)
                   else type(out).__name__)
            raise WrongOutput(f"{case.label} returned {got}; expected {want} {q.dtype}")
        return out
    if case.ragged_form == "packed":
        return ragged_packed(attention, case.lengths)
    if case.ragged_form == "padded":
        return ragged_padded(case.spec.variant.module, case.lengths, causal=causal, cfg=cfg)
    return attention


def _time(case: Case, s: MeasureSettings, threads: int, run: Callable[[], object]
          ) -> dict[str, Any]:
    """Time ``run``, whose inputs were made before it existed."""
    # one untimed call first: a cold first call (lazy init, allocator growth) would otherwise
    # set blocked_autorange's block size, and with it which regime the blocks measure
    if case.device.startswith("cuda"):
        flush = l2_flusher(case.device) if s.l2_flush else None
        t = cuda_time(run, min_run_time=s.min_run_time, min_samples=s.min_samples,
                      flush=flush)
        timer = "cuda events" + (", L2 flushed between calls" if flush else "")
        faults = None
    else:
        first = time.perf_counter()
        run()  # the untimed first call; faults are counted over every call after it
        cold_s = time.perf_counter() - first  # >= min_run_time: blocks of one call
        counted, calls = counting(run)
        before = minor_faults()
        t = time_callable(counted, min_run_time=s.min_run_time, threads=threads,
                          min_samples=s.min_samples, one_call_s=cold_s)
        faults = (minor_faults() - before) / calls[0]
        timer = "torch.utils.benchmark blocked_autorange"
    return {
        "threads": threads, "times_ms": tuple(x * 1e3 for x in t.times_s),
        "median_ms": t.median_s * 1e3, "iqr_ms": t.iqr_s * 1e3, "samples": t.samples,
        "number_per_run": t.number_per_run, "timer": timer, "minor_faults_per_call": faults,
    }


def _mode_call(case: Case, s: MeasureSettings, fn: Attention) -> Callable[[], object]:
    """The case's mode as one call; inputs are made before the callable exists."""
    q, k, v, dout = make_inputs(case.shape, dtype=DTYPES[case.dtype], device=case.device,
                                seed=s.seed)
    return timed_callable(fn, q, k, v, dout, case.mode)


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages the kernel mapped)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counting(run: Callable[[], object]) -> tuple[Callable[[], object], list[int]]:
    """``run`` wrapped to count its calls (blocked_autorange's calibration calls included)."""
    calls = [0]

    def counted() -> object:
        calls[0] += 1
        return run()
    return counted, calls


def _peaks(case: Case, s: MeasureSettings, fn: Attention) -> dict[str, Any]:
    """Peak MiB of the forward, and of forward+backward when the mode has a backward."""
    q, k, v, dout = make_inputs(case.shape, dtype=DTYPES[case.dtype], device=case.device,
                                seed=s.seed)
    result = {}
    phases = [("fwd", "peak_fwd_mib")] + ([("fwd+bwd", "peak_fwd_bwd_mib")] * case.backward)
    for mode, name in phases:
        run = timed_callable(fn, q, k, v, dout, mode)
        if mode != case.mode:
            run()  # warm-up outside the window (the timed mode is warm already)
        result[name] = peak_bytes(run, case.device) / MIB
    return result


def _model(case: Case, row: Row) -> dict[str, Any]:
    """FLOPs, bytes moved, throughput, and the variant's memory expectation (no variant
    code runs)."""
    variant, cfg = case.spec.variant, case.spec.cfg
    flops = sum(mode_flops(variant.computes(cfg), case.mode, 1, case.h, n, n, case.d,
                           case.causal, dv=case.dv or None)
                for n in case.lengths)  # real tokens' pairs only
    kw = {"dtype": DTYPES[case.dtype], "causal": case.causal, "cfg": cfg, "device": case.device}
    fwd = variant.expected_peak_bytes(case.shape, backward=False, **kw)
    both = variant.expected_peak_bytes(case.shape, backward=True, **kw) if case.backward else None
    moved = traffic_fields(case, row.median_ms)
    waste = tokens_per_s = None
    if case.ragged:  # no model of a ragged batch's peak; tokens and padding instead
        fwd = both = None
        waste = ragged_waste(case.lengths, case.nq, case.causal, case.ragged_form)
        tokens_per_s = sum(case.lengths) / (row.median_ms * 1e-3) if row.median_ms else None
    return {
        "padding_waste": waste, "tokens_per_s": tokens_per_s,
        "bytes_moved": moved["bytes_moved"], "gib_s": moved["gib_s"],
        "extra": {**row.extra, "bytes_convention": moved["bytes_convention"]},
        "flops": flops,
        "gflops": flops / (row.median_ms * 1e-3) / 1e9 if row.median_ms else None,
        "expected_fwd_mib": None if fwd is None else fwd / MIB,
        "expected_fwd_bwd_mib": None if both is None else both / MIB,
    }


def _roof(case: Case, row: Row, threads: int) -> dict[str, Any]:
    """The roof (re-measured every few minutes), efficiency, and the host's load now."""
    roof, age = current_roof(case.device, case.dtype, threads=threads)
    eff = row.gflops / roof.gemm_gflops if row.gflops else None
    extra = {**row.extra, "roof_age_s": round(age, 1), "load1": os.getloadavg()[0]}
    if eff is not None and eff > 1:
        extra["flag"] = (f"efficiency {eff:.0%} of a roof measured {age:.0f} s earlier: the "
                         "host's speed changed between them (busy or throttled)")
    line = roofline_fields(row.flops, row.bytes_moved, row.gflops, roof.gemm_gflops,
                           roof.copy_gib_s)
    if "bound" in line:
        extra["bound"] = line.pop("bound")
    return {"roof_gflops": roof.gemm_gflops, "efficiency": eff, "copy_gib_s": roof.copy_gib_s,
            **line, "extra": extra}


def _failure(row: Row, exc: BaseException) -> Row:
    """Turn a recorded failure into the row's status and reason."""
    if isinstance(exc, Unavailable):
        return replace(row, status=Status.UNAVAILABLE, reason=str(exc))
    if is_oom(exc):
        return replace(row, status=Status.OOM, reason=str(exc).strip().splitlines()[0][:300])
    tail = "".join(traceback.format_exception(exc)[-3:]).strip()
    return replace(row, status=Status.ERROR, reason=f"{type(exc).__name__}: {exc}\n{tail}")


def _measure_decode(case: Case, s: MeasureSettings, row: Row) -> Row:
    """A decode case: the oracle's check of a step and its cache, the timed step, its peak
    above its inputs and the cache's size (exceptions go to the caller)."""
    threads, variant = s.threads or torch.get_num_threads(), case.spec.variant
    kernels = variant.dispatched(case.call_shape, device=case.device, dtype=DTYPES[case.dtype],
                                 causal=False, backward=False, cfg=case.spec.cfg)
    if kernels:  # t new queries against every key: no causal flag (a mask for t > 1)
        row = replace(row, extra={**row.extra, "kernel": kernels})
    if s.check:
        agreement, shape = check_decode(case, variant, s.check_max_scores, s.seed)
        row = replace(row, **_agreement_fields(agreement, shape))
    run, cache_bytes, read_bytes = step_call(case, variant, s.seed)
    timed = _time(case, s, threads, run)
    timer = timed.pop("timer")
    row = replace(row, **timed, cache_mib=cache_bytes / MIB,
                  extra={**row.extra, "timer": timer, "allocator": in_effect()})
    if s.memory and case.device.split(":")[0] in MEMORY_DEVICES:
        row = replace(row, peak_fwd_mib=peak_bytes(run, case.device) / MIB)
    moved = step_io_bytes(case, read_bytes)
    flops = mode_flops(case.spec.variant.computes(case.spec.cfg), case.mode, case.b, case.h,
                       case.nq, case.nk, case.d, True, case.new_tokens, dv=case.dv or None)
    seconds = row.median_ms * 1e-3 if row.median_ms else None
    row = replace(row, flops=flops, bytes_moved=moved,
                  gflops=flops / seconds / 1e9 if seconds else None,
                  gib_s=moved / seconds / 2**30 if seconds else None,
                  extra={**row.extra, "bytes_convention": DECODE_BYTES})
    if s.roof:
        row = replace(row, **_roof(case, row, threads))
    return replace(row, status=Status.MISMATCH if row.check_ok is False else Status.OK)


def _measure(case: Case, s: MeasureSettings, row: Row) -> Row:
    """Every measurement of an available case, in order (exceptions go to the caller)."""
    if case.mode == DECODE:
        return _measure_decode(case, s, row)
    threads = s.threads or torch.get_num_threads()
    variant = compiled_variant(case) if case.compile else case.spec.variant
    fn = _attention_fn(case, variant)
    kernels = case.spec.variant.dispatched(
        case.shape, device=case.device, dtype=DTYPES[case.dtype], causal=case.causal,
        backward=case.backward, cfg=case.spec.cfg)
    if kernels:  # what the library picked for these inputs: the row says what ran
        row = replace(row, extra={**row.extra, "kernel": kernels})
    if case.compile:  # first: the oracle's calls would otherwise pay (part of) the compile
        row = replace(row, extra={**row.extra, **compile_timings(case, s, fn)})
    if s.check:
        row = replace(row, **_check(case, s, variant))
    timed = _time(case, s, threads, _mode_call(case, s, fn))
    timer = timed.pop("timer")
    row = replace(row, **timed, extra={**row.extra, "timer": timer, "allocator": in_effect()})
    if s.memory and case.device.split(":")[0] in MEMORY_DEVICES:
        row = replace(row, **_peaks(case, s, fn))
    elif s.memory:
        row = replace(row, extra={**row.extra, "memory": f"not measured on {case.device}"})
    row = replace(row, **_model(case, row))
    if s.roof:
        row = replace(row, **_roof(case, row, threads))
    return replace(row, status=Status.MISMATCH if row.check_ok is False else Status.OK)


def unavailable_reason(case: Case) -> str | None:
    """Why the case cannot run here (the variant's SUPPORTS and its own reason), or None."""
    variant = case.spec.variant
    if case.mode == DECODE and case.compile:
        return ("compile=true compiles a variant's attention(), not its decode step: decode "
                "cases run eagerly (compile=[false])")
    if case.mode == DECODE and variant.decode_reason(case.spec.cfg):
        return variant.decode_reason(case.spec.cfg)
    if case.ragged_form == "padded" and case.compile:
        return ("compile=true compiles attention(); the padded ragged form calls "
                "attention_padded(): ragged_form=packed runs compiled")
    if case.ragged_form == "padded" and padded_reason(variant.module, variant.name):
        return padded_reason(variant.module, variant.name)
    if case.dv and not variant.supports.value_dim:
        return (f"{variant.name} takes v with q's head dim (Supports.value_dim is false): "
                f"dv={case.dv} for d={case.d} does not run")
    if case.kv_heads and not variant.supports.gqa:
        return (f"{variant.name} takes k and v with as many heads as q (Supports.gqa is "
                f"false): kv_heads={case.kv_heads} for h={case.h} does not run")
    if case.compile and not variant.supports.compile:
        return (f"{variant.name} has no compiled mode: compile=true applies to variants "
                f"written in plain PyTorch ops (Supports.compile), not to a library's kernel "
                f"or a variant that compiles itself")
    reason = variant.unavailable_reason(case.device, DTYPES[case.dtype], causal=case.causal,
                                        backward=case.backward, cfg=case.spec.cfg)
    if reason:
        return reason
    return variant.shape_refusal(case.call_shape, device=case.device, dtype=DTYPES[case.dtype],
                                 causal=case.causal and case.mode != DECODE,
                                 backward=case.backward, cfg=case.spec.cfg)


def measure(case: Case, settings: MeasureSettings | None = None) -> Row:
    """Measure one case into one row; the variant's failures become the row's status."""
    s, start = settings or MeasureSettings(), time.perf_counter()
    row = base_row(case)
    try:
        reason = unavailable_reason(case)
        if reason:
            row = replace(row, status=Status.UNAVAILABLE, reason=reason)
        else:
            with compile_settings(case):
                row = _measure(case, s, row)
    except Exception as exc:  # anything the variant raised is recorded, traceback tail too
        row = _failure(row, exc)
    return replace(row, wall_s=time.perf_counter() - start)
