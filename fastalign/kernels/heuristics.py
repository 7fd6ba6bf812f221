"""Block sizes: a heuristic keyed by feature width and degree statistics, refined by a
small on-device autotune, both cached per graph (on the graph's RowPlan).

Tiles are [BLOCK_E edges x BLOCK_F features]. The heuristic:
  * BLOCK_F = next power of two of the width, capped (128 fp32 / 256 16-bit elements:
    a 512-byte row slice per edge, wide enough for 16-byte vector loads across a warp);
    wider features loop over (or are gridded over) feature blocks.
  * BLOCK_E = the mean degree rounded up to a power of two (short rows waste no lanes),
    kept so the tile has <= TILE elements (register pressure), within [16, 128].
  * num_warps = 2 for tiles of <= 1024 elements, 4 up to 4096, else 8.

By default the configuration is a function of the graph's degree statistics, the width
and the dtype alone, so a graph gives the same summation order, hence the same bits, in
every process and on every run.

Autotune is opt-in (CUDA only; FASTALIGN_TRITON_AUTOTUNE=1): the first call of an op on
a graph times a few neighbours of the heuristic (BLOCK_E halved/doubled, one other warp
count) with CUDA events and keeps the fastest in ``plan.configs[key]``. Timings differ
from process to process, so a tuned run may pick another block size, hence another
summation order, than the next process: results are then reproducible within a process
but not bitwise across processes. Only kernels whose launches are idempotent (they
overwrite their outputs) are tuned. Under the interpreter, during CUDA-graph capture, or
when tuning fails, the heuristic is used.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from .. import settings
from ..validation import acc_dtype

TILE = 4096


class Config(NamedTuple):
    BLOCK_E: int
    BLOCK_F: int
    num_warps: int


def tl_acc(dtype: torch.dtype):
    """The Triton type of ``fastalign.validation.acc_dtype(dtype)``."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def block_f(width: int, dtype: torch.dtype, cap: int = 0) -> int:
    if not cap:
        cap = 256 if dtype in (torch.float16, torch.bfloat16) else 128
    return int(min(max(triton.next_power_of_2(max(width, 1)), 16), cap))


def heuristic(plan, width: int, dtype: torch.dtype, cap: int = 0, tile: int = TILE) -> Config:
    bf = block_f(width, dtype, cap)
    be = triton.next_power_of_2(max(int(plan.avg_degree + 0.5), 1))
    be = int(min(max(be, 16), 128, max(tile // bf, 16)))
    tile_elems = be * bf
    # small tiles (low-degree graphs, narrow features): 2 warps, so that more programs
    # are resident per SM (one program per row: latency-bound, not lane-bound)
    warps = 2 if tile_elems <= 1024 else (4 if tile_elems <= 4096 else 8)
    return Config(be, bf, warps)


def softmax_block(plan) -> Config:
    """Edge softmax moves one scalar per edge: a wide edge block (the mean degree
    rounded up, in [32, 1024]); short rows waste a few lanes."""
    be = int(min(max(triton.next_power_of_2(max(int(plan.avg_degree), 1)), 32), 1024))
    return Config(be, 1, 4 if be <= 256 else 8)


ROWS_TILE = 256  # edge lanes of a packed softmax program: 2 per thread of 4 warps


def softmax_rows(plan):
    """(ROWS, ROW_E, num_warps) of the packed edge-softmax row kernel: ROW_E lanes per row
    (the mean degree rounded up to a power of two, in [1, 1024]) and as many rows per
    program as fill ROWS_TILE lanes, at most 64. A function of the degree statistics
    alone, and a row's result depends only on ROW_E: the same bits in every process."""
    row_e = int(min(triton.next_power_of_2(max(int(plan.avg_degree + 0.5), 1)), 1024))
    rows = int(min(max(ROWS_TILE // row_e, 1), 64))
    return rows, row_e, 4 if rows * row_e <= ROWS_TILE else 8


class RowsConfig(NamedTuple):
    ROWS: int
    ROW_E: int
    BLOCK_F: int
    num_warps: int


def rows_packing(plan, width: int, dtype: torch.dtype, tile: int = TILE):
    """The packed sum/mean aggregation's tile, or None for one row per program.

    A row gets ROW_E edge lanes, the largest power of two not above the mean degree (a
    typical row fills its lanes at least once), and a program takes as many rows as fill
    the tile's edge lanes (``tile // BLOCK_F``, at least 16), at most 64; with room for
    fewer than two rows (mean degree at or above the one-row kernel's edge block) the
    one-row kernel runs. A function of the degree statistics, the width and the dtype
    alone, and a row's result depends only on ROW_E and BLOCK_F: the same bits in every
    process, whichever rows share its program. ``FASTALIGN_TRITON_PACK_ROWS=0`` turns
    packing off (one row per program everywhere), to compare the two on a device."""
    if not settings.triton_pack_rows():
        return None
    bf = block_f(width, dtype)
    lanes = max(tile // bf, 16)
    mean = max(int(plan.avg_degree), 1)
    row_e = 1 << (mean.bit_length() - 1)
    rows = min(lanes // row_e, 64)
    if rows < 2:
        return None
    return RowsConfig(rows, row_e, bf, 2 if rows * row_e * bf <= 1024 else 4)


def _neighbours(cfg: Config) -> Sequence[Config]:
    out = [cfg]
    for be in (cfg.BLOCK_E // 2, cfg.BLOCK_E * 2):
        if 16 <= be <= 256 and be * cfg.BLOCK_F <= 4 * TILE:
            out.append(cfg._replace(BLOCK_E=be))
    out.append(cfg._replace(num_warps={2: 4, 4: 8, 8: 4}[cfg.num_warps]))
    return out


def _autotune_enabled(device: torch.device) -> bool:
    if device.type != "cuda" or settings.triton_interpret() or not settings.triton_autotune():
        return False
    try:
        return not torch.cuda.is_current_stream_capturing()
    except Exception:  # pragma: no cover
        return False


def _time(run: Callable[[Config], None], cfg: Config, reps: int = 3) -> float:
    run(cfg)  # compile + warm up
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run(cfg)
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps


class force_warps:
    """Context manager: launch the kernels whose config key starts with one of ``kernels``
    ("agg", "max_bwd", "edge_sim", "edge_sim_grad", "skl_fwd", "skl_grad") with
    ``num_warps`` warps instead of the heuristic's, without caching the choice. The
    heaviest kernels hold 200+ registers per thread at 4 warps, so their warp count is a
    figure to measure per device (bench/bench_gpu.py times both), not a constant."""

    def __init__(self, num_warps: int, kernels: Sequence[str]):
        self.num_warps, self.kernels = int(num_warps), tuple(kernels)

    def __enter__(self):
        self.prev = dict(_FORCED_WARPS)
        _FORCED_WARPS.update({k: self.num_warps for k in self.kernels})
        return self

    def __exit__(self, *exc):
        _FORCED_WARPS.clear()
        _FORCED_WARPS.update(self.prev)


_FORCED_WARPS: dict = {}


def choose(plan, key: tuple, base: Config, run: Callable[[Config], None], device) -> Config:
    """The config for ``key`` on this plan: forced (``force_warps``), cached, else tuned
    (CUDA) or ``base``.

    ``run(cfg)`` launches the op's kernels with ``cfg`` (and must be idempotent). When
    tuning happened, the outputs hold the result of the last timed launch, which is the
    caller's responsibility to redo with the chosen config (``launch`` does that).
    """
    if key[0] in _FORCED_WARPS:
        return base._replace(num_warps=_FORCED_WARPS[key[0]])
    cfg = plan.configs.get(key)
    if cfg is not None:
        return cfg
    if not _autotune_enabled(device) or plan.num_edges < 1 << 16:
        plan.configs[key] = base  # small graphs: launch overhead dominates, skip tuning
        return base
    try:
        timings = [(_time(run, c), i, c) for i, c in enumerate(_neighbours(base))]
        cfg = min(timings)[2]
    except Exception:  # pragma: no cover - fall back rather than fail the op
        cfg = base
    plan.configs[key] = cfg
    return cfg


def launch(plan, key: tuple, base: Config, run: Callable[[Config], None], device) -> Config:
    """Choose the config (tuning on first use) and run the op once with it."""
    cfg = choose(plan, key, base, run, device)
    run(cfg)
    return cfg
