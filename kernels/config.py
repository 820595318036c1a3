"""Launch and tuning parameters for every kernel, in one place.

Launchers read these module attributes at call time (never at import), so tests can
shrink them (``monkeypatch.setattr(config, "CUDA_THREADS", 32)``) to make tiny inputs
span several blocks and partial blocks, and tuning is one edit here.
"""

# --- CUDA -------------------------------------------------------------------------

# Threads per block of every CUDA kernel: a multiple of 32, at most 1024. Channels-last
# reductions split them as (bx, CUDA_THREADS // bx) with bx = min(32, next_pow2(C)).
CUDA_THREADS = 256
# Blocks per SM the grids aim for: 2048 threads per SM on an H100 / 256. The reductions
# split each channel into about SMs * this / C blocks, the elementwise passes grid-stride
# over at most SMs * this blocks. ptxas gives the kernels 40-90 registers per thread
# (the gate reports them), so 2-6 of these blocks are resident at once: the heavier
# kernels run in a few full waves, each thread keeping 4-8 loads in flight.
CUDA_BLOCKS_PER_SM = 8
# SMs to size grids for; None asks the device (132 on an H100 SXM).
CUDA_SM_COUNT = None
# Fewest elements per channel one reduction block is given (below this, splitting a
# channel over more blocks costs more in partials and launch tails than it gains).
CUDA_MIN_CHUNK = 4096
# threadIdx.y extent of the finalize kernels' (32, rows) blocks: partials merged in
# parallel per channel.
CUDA_FINALIZE_ROWS = 8
# Elements per unit of the optimizer steps' segment tables: a block takes whole units, so
# a 16 Mi-element step makes 2048 units, enough for every resident block of an H100, and
# a unit is 16 trips of 256 threads loading 2 elements of each column.
CUDA_OPTIM_CHUNK = 8192

# --- CPU --------------------------------------------------------------------------

# Elements per NCHW unit: a contiguous piece of one (n, c) row, reduced in registers and
# merged into its channel's float64 partial (a second pass, from L1, only when its
# provisional mean was far off). 4096 float32 = 16 KiB; 1024-8192 measured alike.
CPU_CHUNK = 4096
# Channels-last loops run over periods of R rows (R a power of two, R * C <= CPU_PERIOD
# elements when C allows): flat loops over per-column parameters and accumulators tiled
# R times. 1024 keeps those few tiled arrays in L1: of 128-8192, 512-1024 was fastest.
CPU_PERIOD = 1024
# Channels-last statistics block in elements (whole periods): merged into float64
# partials as one piece, and passed again (from L2: 64 Ki float32 = 256 KiB) when its
# provisional means were far off; also how many elements the backward sums add in
# x.dtype before folding into float64 totals.
CPU_BLOCK = 65536

# --- CPU optimizers ---------------------------------------------------------------

# Elements per unit of work of the optimizer kernels: prange shares the units out to
# the threads (contiguous runs of units), and each unit branches once on the variant
# flags before its vectorized loop. The steps run at the memory floor for any value from
# 16 Ki to 8 Mi (Adam, 16 Mi float32 params, 2 threads); 64 Ki keeps units balanced.
# Units cut the concatenated elements of a step's segment table, so they are equal
# whatever the tensor sizes.
CPU_OPTIM_CHUNK = 65536
# Elements per block of the norm reductions (kernels/cpu/clip.py: clipping, and an
# optimizer step's clipping and inf/NaN check), one float64 row of partials each. Fixed,
# so the norm is the same whatever the thread count; 64 Ki float32 = 256 KiB per row
# (16 Mi params: 256 rows for the host to add).
CPU_SUMSQ_BLOCK = 65536

# --- CUDA optimizers --------------------------------------------------------------

# The optimizer kernels (kernels/cuda/optim.py) use CUDA_THREADS-thread blocks, at most
# CUDA_SM_COUNT * CUDA_BLOCKS_PER_SM of them, each taking units of CUDA_OPTIM_CHUNK
# elements in turn. At 40-80 registers (float32; the gate reports them) 3-6 of these
# 256-thread blocks are resident per SM.

# --- Random kernels (Philox4x32-10) -----------------------------------------------

# Elements per unit of work of the CPU random kernels (a multiple of 4: whole Philox
# blocks): prange shares the units out to the threads, each a loop of one Philox call
# per 4 elements. The CUDA random kernels grid-stride over blocks of 4 elements with
# CUDA_THREADS-thread blocks, at most CUDA_SM_COUNT * CUDA_BLOCKS_PER_SM of them.
CPU_RANDOM_CHUNK = 65536
