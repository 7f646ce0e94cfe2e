#!/usr/bin/env bash
# One device call's worth of GPU work on the decode path: build the library for Hopper, run the
# GPU tests, then benchmarks, each step under its own time limit so that one slow step cannot take
# the others' results with it. Logs and results are written under a work folder and packed into
# one archive in $OUT (default ./gpu-out), named after the steps run.
#
#   STEPS="build tests gemm decode" OUT=/tmp/out bash bench/gpu_session.sh
#
# A library built elsewhere and copied to build-gpu/ (instead of the build step) must link cuBLAS: a toolkit
# with nvcc and the runtime only builds one that runs the lm head and prefill GEMMs on its own kernel (batch-64
# decode ~4x slower; the log's first line warns). The nvidia-cublas wheel matching the toolkit (13.0.0.19 for
# CUDA 13.0) carries the headers and libraries: copied into the toolkit's targets/x86_64-linux/{include,lib}
# (with libcublas.so / libcublasLt.so links), CMake finds them.
#
# Steps:
#   build         cmake, sm_90a, into build-gpu/
#   tests         every gpu-marked kernel test and the engine tests (or apart: wtests, the w4a16
#                 kernels; dtests, the decode-size kernel and its fused norm; ktests, the attention,
#                 norm and argmax kernels; etests, the engine against the CPU backend)
#   sanitize      compute-sanitizer memcheck on the w4a16, fused-norm, attention and norm tests
#   gvtests       the column-tile w4a16 kernel's tests (w4a16_gemv.cu); gemv_memcheck: compute-sanitizer on its checks;
#                 gemv_gemm: bench/gemm at 1/2/4 rows with it beside the engine's path; gemv_etests: the engine with it
#                 against the CPU backend; gemv_decode: 2B/7B w4a16 + int8 KV batch 1 without and with it;
#                 gemv_parts: bench/gemm at one row with its warps a tile pinned to 8/4/2/1; gemv_rings: with 8 chunks
#                 in flight a lane, then 4; gemv_trace: batch-1 steps' kernels (2B, 7B) without and with it;
#                 gemv_decode_2b: 2B batch 1 without and with it; gemv_waves: its check, then those steps with its
#                 grids capped (VLM_W4A16_GEMV_WAVE) and rings; gemv_shared: bench/gemm at one row and batch-1 traces
#                 with its ring in registers and in shared memory (VLM_W4A16_GEMV_SHARED_RING=8/16), on q/k/v, o,
#                 gate_up or each layer (VLM_W4A16_GEMV_EACH=1/2); gemv_shared_decode: batch-1 tok/s of those;
#                 gemv_shared_memcheck: compute-sanitizer on the shared ring's checks; gemv_rows: 2B batch 2 and 4
#                 (GEMV_ROWS_BATCHES) with column tiles at one row and up to 4 rows; gemv_7b_o: 7B batch 1 with o alone
#                 on column tiles (register ring; shared ring: VLM_W4A16_GEMV_ALONE=1), o and down, the default
#   gemm_new      bench/gemm at decode sizes; gemm: the same, then with VLM_W4A16_DECODE=0; gemm_full: every M
#   gemm_apart    bench/gemm with torch timed in the library's process, then in a process of its own (--peers apart),
#                 at GEMM_APART_MS rows on GEMM_APART_LAYERS (64,256; the 7B layers)
#   cutlass_gemm  the CUTLASS mixed-input GEMM (w4a16_cutlass.cu; carry .gpu-carry/cutlass, CUTLASS's include/ and
#                 tools/util/include/, made after `make setup` by: c=.venv/lib/python3.11/site-packages/cutlass_library/source;
#                 mkdir -p .gpu-carry/cutlass/tools/util; cp -r $c/include .gpu-carry/cutlass/;
#                 cp -r $c/tools/util/include .gpu-carry/cutlass/tools/util/): its tests, bench/gemm at 64/256/2048 rows on
#                 the 7B layers (CUTLASS_GEMM_MS, CUTLASS_GEMM_LAYERS; CUTLASS_TILE_VARIANTS="M:64 N:256" the other
#                 tiles), the engine with it; cutlass_tests: the tests alone; cutlass_engine: 2B/7B prefill at batch
#                 1 and decode at 32/64/128 without and with it (its default rows); etests_cutlass: the engine's
#                 GPU tests with it on (the default since 2026-12-06: as etests); cutlass_prefill: 2B prefill at
#                 batch 1/64, decode at 64/128, without and with it; cutlass_memcheck: compute-sanitizer memcheck on
#                 its tests; cutlass_schedules: its stream-K settings and tiles at 32-256 rows on every layer
#                 (bench/cutlass_schedules.py; CUTLASS_SCHED_MS, _LAYERS, _SETTINGS), after its tests with each;
#                 ncu_cutlass: Nsight Compute on it at 64 and 128 rows (7B q/k/v, 7B o, 2B gate_up)
#   gemm_codes    the general w4a16 kernel's codes form up to 16 rows (the default; =0 dequantizes): its tests, compute-
#                 sanitizer on its checks, bench/gemm at M = 5/8/12/16 without and with it (and the read floor)
#   codes_engine  the engine's GPU tests with the codes form, 2B w4a16 + int8 KV decode at batch 8/16 without and with it
#   serve_dequant_chunks fp16 vs w4a16 + int8 KV at 1/16 with VLM_DEQUANT_CHUNK_MB=16, then w4a16 + int8 KV at 64/256
#                 without and with it (serving carry)
#   serve_chunk   fp16 vs w4a16 + int8 KV at 1/16 with prefill chunks of 128 tokens, then 2,048 (serving carry)
#   layer_tail    the persistent layer tail (VLM_LAYER_TAIL=1): its tests (bit for bit against the kernel chain up to 4
#                 rows, against the CPU backend up to 16); layer_tail_memcheck: memcheck on one tiny model; layer_tail_bench: 2B and 7B
#                 w4a16 + int8 KV decode at batch 1/4/8/16 without and with it, a profiled batch-1 step each way
#   dense_prefill 4-bit layers kept dequantized for prefill-sized GEMMs (VLM_PREFILL_DENSE_WEIGHTS=1): its GPU tests,
#                 2B prefill at batch 1/64 and decode at 64/128 without the copies, with them, with them from 33 rows
#   layer_tail_wide the tail with its own cut (VLM_LAYER_TAIL_WIDE=1): its CPU comparisons, 2B/7B decode at batch 1/4/16
#                 with the chain, the tail cut the chain's way and its own (16 and 8 ring stages), a profiled step
#   serve_event_loops the LM service on 2 event loops (--grpc-event-loops 2) against 1, through MPS with the copies
#                 from 33 rows, at 64/256 (serving carry)
#   serve_prefill_hold new requests held up to 8 steps to enter together (--prefill-hold-steps 8) against 0, through MPS
#                 with the copies from 33 rows, at 64/256 (serving carry)
#   serve_fronts  the LM port served by 4 processes around the engine (--front-processes 4) against 1, through MPS
#                 with the copies from 33 rows, at 256 (serving carry)
#   serve_fronts_vision2 4 LM fronts with 2 vision processes against 4 fronts and 1, MPS, copies from 33 rows,
#                 at 64/256 (serving carry)
#   serve_fronts_hold 4 LM fronts and 2 vision processes with --prefill-hold-steps 8 against 0, at 256 (serving carry)
#   serve_fronts_low 4 LM fronts against one process at concurrency 1/16 (serving carry)
#   serve_final   the whole sweep (1-256) with 4 LM fronts and 2 vision processes, then with one of each (the default),
#                 then one LM process with 2 vision processes at 64/256; MPS, copies from 33 rows (serving carry)
#   serve_final_fronts the whole sweep with 4 LM fronts and 2 vision processes only (serving carry)
#   serve_targets_high / serve_targets_low  issue 6's targets on one machine (two calls back to back, serving carry):
#                 high: 64/256 with 4 LM fronts and 2 vision processes; low: fp16 against w4a16 + int8 KV at 1/16 in
#                 the default layout with transformers at batch 1 and 16 beside; both through MPS, copies from 33 rows
#   serve_c1_layouts concurrency 1 in the high-concurrency setting, then in the default layout (serving carry)
#   serve_connections the high-concurrency setting at 256 with 4 streams a client connection (64 connections) against
#                 32 (8, the default): the LM fronts share the port by connection (serving carry)
#   serve_tail_compare fp16 vs w4a16 + int8 KV serving at 1/2/4/8/16 with the layer tail and the copies (serving carry)
#   serve_dense_compare fp16 vs w4a16 + int8 KV serving at 1/16 with the copies (the 1.3x target; serving carry)
#   serve_dense_prefill model (a), w4a16 + int8 KV through MPS at 64/256 with VLM_PREFILL_DENSE_WEIGHTS=1, then
#                 without (serving carry)
#   serve_mps     model (a), w4a16 + int8 KV at concurrency 1/64/256: the two service processes in GPU time slices (the
#                 default), then sharing it through NVIDIA MPS (--mps; serving carry)
#   serve_mps_acc the same through MPS with 4 gRPC acceptors in each service, at 64/256
#   serve_mps_prep16 through MPS at 64/256 with 16 image-preprocessing workers in the vision service (default 8)
#   serve_layouts model (a), w4a16 + int8 KV at 64/256: the services as two processes, then as one (serve stack)
#   serve_overlap model (a), w4a16 + int8 KV at concurrency 1/64/256: steps one at a time, then overlapped (serving carry);
#                 serve_overlap1: overlapped only
#   overlap       overlapped steps (VLM_OVERLAP_STEPS=1): their GPU test, the engine's GPU tests with them, 2B w4a16 +
#                 int8 KV decode at batch 1/16/64 without and with them
#   wgmma         the wgmma w4a16 kernel (VLM_W4A16_WGMMA=1 block form, 2 strip form): its checks, compute-sanitizer
#                 on them, bench/gemm at M = 16/64/256/2048 without and with each form, the engine's GPU tests with each
#   strip_default the strip form as the default (17-128 rows): tests of the default routing and each form, compute-
#                 sanitizer, bench/gemm at M = 32-256 with the wgmma kernel off and the strip form at every M, the
#                 engine tests, 2B w4a16 + int8 KV decode at batch 64/128 off vs default
#   dequant_129   dequantize + cuBLAS from 129 rows on Hopper: routing checks, bench/gemm at 160-224 rows default vs
#                 strip form, 2B decode at batch 192 wgmma off vs default, engine tests, serving 64/256 default and
#                 256 with the wgmma kernel off (needs the serving carry)
#   wgmma_cluster the wgmma kernel's split-K sums in thread-block clusters (VLM_W4A16_WGMMA_CLUSTER=1) against the
#                 default partials: checks, compute-sanitizer, bench/gemm at 32/64/128 rows, 2B decode at batch 64/128,
#                 the engine tests with clusters
#   cluster_auto  K slices summed in clusters where the plan says so (the default) against always from partials:
#                 the wgmma checks, bench/gemm at 32/64/128 rows, 2B decode at batch 64/128, the engine tests
#   wgmma_engine  2B w4a16 + int8 KV decode at batch 64/128 with VLM_W4A16_WGMMA=0/1/2, then serving at 64/256
#                 (--stream-interval 4) with 0 and 2 (needs the serving carry: python/vlmserve/_proto, .gpu-carry)
#   wgmma_ncu     Nsight Compute on the wgmma kernel's strip form (NCU_FORM=1: block form) and its split-K sum at
#                 M = 256 (NCU_MS="64 256": both), four layers
#   dequant_chunks prefill-sized w4a16 GEMMs dequantized a stretch of columns at a time (VLM_DEQUANT_CHUNK_MB): the
#                 stretch test, bench/gemm at M = 256/2048 whole and in 8/16/32 MiB stretches, the engine tests with
#                 16, 2B prefill at batch 1/64 whole and with 16
#   dequant       the w4a16 dequantization's exactness test, then bench/gemm at M = 256 and 2048 on every layer
#   decode_new    2B w4a16 + int8 KV at batch 1/16/64, and batch 1 with VLM_FUSED_NORM=0
#   decode_table  2B w4a16 + int8 KV at batch 1-128, fp16 at batch 1 beside transformers
#   decode_matrix_2b, decode_matrix_7b_fp16, decode_matrix_7b_w4a16
#                 the whole bench/decode table (KV fp16/int8/int4 at batch 1-128, transformers beside fp16 weights),
#                 one step each (a device call's limit)
#   early_loads   the decode attention's first tiles loaded before its wait (VLM_ATTENTION_EARLY_LOADS=1, the
#                 default since 2026-12-05) vs after:
#                 its no-bits test, 2B w4a16 + int8 KV decode at batch 1/16/64 and 7B at batch 1, off then on
#   int4_attention the tensor-core decode attention over the int4 cache (VLM_DECODE_ATTENTION_MMA_INT4=1, the
#                 default since 2026-12-05): kernel tests, compute-sanitizer, engine tests, 2B w4a16 + int4 KV
#                 decode at batch 1/16/64 on the CUDA-core kernel then the tensor cores
#   decode_plan_sweep every plan of the decode-size w4a16 kernel (strips a block 1/2/4 x K slices a cluster 1/2/4/6/8
#                 x ring stages 8/16, pinned) against the default one, 8 layers at M = 1/2/4
#                 (bench/decode_plan_sweep.py), then the decode kernel's tests
#   layer_plans   each layer's fastest plan alone (decode_plan_sweep, H100 2026-12-05) pinned for that layer only
#                 (VLM_W4A16_DECODE_PLANS), 2B w4a16 + int8 KV decode at batch 1/4 (7B layers: 7B at batch 1) against
#                 the default, then the plan tests
#   decode_7b     7B w4a16 + int8 KV at batch 1
#   decode        bench/decode: 2B at batch 1/16/64 and 7B at batch 1 beside fp16 weights,
#                 transformers, the general w4a16 kernel and fewer attention key slices
#   prefill       2B w4a16 + int8 KV prefill at batch 1 and 64: tensor-core attention, then the CUDA-core form
#   trace         the kernels of steady decode steps as graphs run them (bench/decode_trace.py): 2B w4a16 +
#                 int8 KV at batch 1 and 64, fp16 weights at batch 1, batch 1 with fewer attention key slices
#   quick         2B w4a16 + int8 KV decode at batch 1 and 64, then batch 1's kernels (decode_trace.py)
#   trace64       batch 64's kernels (decode_trace.py)
#   device_sampling sampled rows drawn on the GPU (VLM_DEVICE_SAMPLING=1): the draw kernel's and the engine's tests,
#                 compute-sanitizer on the kernel's, bench/sampling.py on the CUDA backend without and with it
#   serve_sampled model (a), w4a16 + int8 KV at concurrency 16/64/256 with sampled requests (temperature 0.7, top-p
#                 0.9): drawn on the host (the default), then on the GPU (VLM_DEVICE_SAMPLING=1; after device_sampling)
#   sampling      bench/sampling.py on the CUDA backend: greedy against sampled requests (drawn on the host) at batch
#                 1/16/64, a 92,544-token vocabulary
#   trace7b       the 7B shape's batch-1 kernels (decode_trace.py), then 7B w4a16 + int8 KV decode at batch 1
#   ncu_gemm      Nsight Compute on the decode-size w4a16 GEMM at M = 1 (2B qkv/gate_up/down, 7B gate_up):
#                 DRAM throughput, issue activity, warp stalls, occupancy; ncu_gemm64: the same layers at M = 64
#                 (the general kernel and its split-K sum)
#   ncu_attn      Nsight Compute on the decode attention (2B heads, int8 KV, context 512) at batch 64 and 1
#   attn_ab       2B w4a16 + int8 KV decode at batch 1 and 64 with the CUDA-core decode attention
#                 (VLM_DECODE_ATTENTION_MMA=0), then the tensor-core one with 4 and 2 attention blocks per SM
#   attn_b1       2B w4a16 + int8 KV decode at batch 1 with 64 and 256 keys per attention slice
#                 (VLM_ATTENTION_MIN_KEYS_PER_SPLIT; the tensor-core kernel's default was 128 when it ran, now 64)
#   rope          RoPE and the K/V write inside the decode attention: compute-sanitizer on its bit-identity test
#                 (one shape; etests runs every shape), and 2B w4a16 + int8 KV decode at batch 1/16/64 without and with it
#   threads       model (a), w4a16 + int8 KV at concurrency 64 and 256 with each service process's busiest threads and
#                 a py-spy dump of each during each level (py-spy from .gpu-carry/wheels if carried)
#   vision        the vision encoder's GPU tests, then bench/vision.py: eager, CUDA graphs and torch.compile + graphs
#   vtests        the vision encoder's GPU tests (graphs, compiled, replicas)
#   serve_compile model (a), w4a16 + int8 KV at concurrency 64/256, the vision forward as graphs then compiled
#   serve_preprocess model (a), w4a16 + int8 KV at concurrency 1/64/256, image preprocessing in threads then processes
#   serve_prep_default model (a), w4a16 + int8 KV at concurrency 1/64/256 with the vision service's defaults
#   serve_interval model (a), w4a16 + int8 KV at concurrency 64/256 with one token a message, then --stream-interval 4
#   serve_interval4 the same with --stream-interval 4 alone at concurrency 1/64/256
#   prep_check    the image processor on the GPU (--preprocess-device): its GPU tests with the vision tests (needs
#                 the serving carry for the tests' gRPC)
#   prep_serve    serving at 64/256 with the image processor on the GPU (forced), then on the host (serving carry)
#   prep_bench    bench/preprocess.py: one JPEG's preparation on the host and on the GPU (after prep_serve)
#   leads_serve   serving at 64/256: the defaults (with a py-spy record of each service), Python's 5 ms GIL
#                 switch interval, 4 gRPC acceptors in each service, the image processor on the GPU (serving carry)
#   pyenv         which optional image packages (torchvision, OpenCV, JPEG decoders) the device image has
#   serve_c1      model (a), w4a16 + int8 KV at concurrency 1 only
#   serve_compare model (a) fp16 vs w4a16 + int8 KV at concurrency 1/16 with transformers at batch 16
#   serve_llava   model (b), the LLaVA-1.5-7B shape: w4a16 + int8 KV at concurrency 1/16/64, no peer (builds and
#                 quantizes the model under /tmp/serve-work, which serve_llava_compare then reuses)
#   serve_llava_compare model (b) fp16 vs w4a16 + int8 KV at concurrency 1/16, transformers at batch 16
#   serve_compare_codes the same with the general w4a16 kernel's codes form (VLM_W4A16_GEMM_CODES=1, after gemm_codes)
#   serve_variants model (a) plain w4a16 and w4a16 + int4 KV, each with vision batch 16 and 1, at concurrency 1/16
#   profile       VLM_CUDA_PROFILE=1: each phase of 2B prefill and decode steps at batch 1 and 64
#   serve         bench/serve.py on model (a), w4a16 + int8 KV at concurrency 1/16/64/256 (JPEG, two processes; needs
#                 python/vlmserve/_proto carried, and .gpu-carry/wheels where the image lacks packages)
#   serve_leads   the same at 1/64/256 with JPEG requests in one process, then PNG requests to two processes
#   stages16      the decode-size w4a16 kernel with 16 ring stages a warp instead of 8 (VLM_W4A16_DECODE_RING=16):
#                 the decode-kernel tests with it, bench/gemm at M = 1/4 and 2B w4a16 + int8 KV decode at batch
#                 1/16/64 with each
#   dense_check   the dense decode kernel's tests and compute-sanitizer on them, then 2B fp16 + int8 KV at batch 1
#   dense         the dense decode kernel (fp16/bf16 weights, M <= 4): its tests and compute-sanitizer on them,
#                 bench/gemm at M = 1 and 4, 2B fp16 weights + int8 KV decode at batch 1 and 4 with it and with
#                 cuBLAS and separate norms (VLM_DENSE_DECODE=0)
#   base_build    the library of the sources before a change into build-base/: AB_PATCH (default
#                 .gpu-carry/ab/base.patch, `git diff BASE -- CMakeLists.txt native` carried) applied in reverse to a
#                 copy of CMakeLists.txt and native/; for the same-machine comparisons below (no CUTLASS: batch 1 and
#                 the decode-size kernels do not use it)
#   ab_decode     2B and 7B w4a16 + int8 KV decode at batch AB_BATCHES (default 1): the base library, then this tree's,
#                 the pair twice (two rounds show the spread beside the difference)
#   ab_gemm       bench/gemm at M = 1 (AB_GEMM_MS) with the base library, then this tree's
#   evict_ab      the decode kernel's weights and group records copied plainly (a second library, build-plain/,
#                 built with -DVLM_W4A16_EVICT_FIRST=OFF) against this tree's (L2 evict_first, the default): the
#                 decode-size outputs' digest from each (the same bits), then ab_decode and ab_gemm with the plain one
#                 as their "base" (AB_BASE_LIB: the library in that place, build-base/'s by default)
#   policy_ab     as evict_ab, the second library (build-normal/) built with VLM_W4A16_WEIGHT_POLICY_NORMAL: the same
#                 SASS as this tree's but the policy's constant (evict_normal, what plain copies get), so the policy's
#                 effect alone, apart from the plain build's register allocation (it spills; these do not)
#   lm_head_ab    the lm head at one row: its tests (the kernel's fp32 logits, the engine against cuBLAS), then 2B and
#                 7B w4a16 + int8 KV decode at batch 1 with VLM_LM_HEAD_DECODE=0 (cuBLAS), 1 (the decode-size dense
#                 kernel with an L2 evict_first policy, the default) and 2 (the same kernel, plain loads), two rounds
#   head_argmax   the greedy token taken in the lm head's kernel at one row (VLM_LM_HEAD_ARGMAX=1, the default since 12-07): its
#                 kernel tests (against argmax_rows: ties, a NaN logit, a reused workspace) and the engine's same-bits
#                 test, then 2B and 7B w4a16 + int8 KV decode at batch 1 off then on, two rounds
#   attn_cuts_tests the batch-1 attention latency cuts (off by default): the decode-attention kernel tests (every case
#                 with the release merge, q first and one wave of slices; the first two's same-bits digest), compute-
#                 sanitizer memcheck on the cases with all three
#   attn_cuts_etests the engine's RoPE-inside same-bits tests (the release merge and q first among their runs) and its
#                 AWQ families against the CPU backend with all three cuts
#   attn_cuts     w4a16 + int8 KV tok/s at batch 1 (TRACE_MODELS, GEMV_ROUNDS, DECODE_BATCHES): the cuts off; the
#                 release merge (VLM_ATTENTION_RELEASE_MERGE=1); with q first (VLM_ATTENTION_Q_FIRST=1); with one
#                 wave of slices (VLM_ATTENTION_ONE_WAVE=1: the 7B's 9 slices become 8); all three with one block an
#                 SM (the 7B: 4 slices, 128 blocks, leaving each SM the registers for o's blocks to start beside
#                 them; the 2B's 16 slices are 128 blocks already, for 132 SMs); all three with 128 keys a slice (8
#                 slices, both models); then the steps' kernels off and with all three
#   attn_latency  the tensor-core decode attention's row written with RoPE inside patched into its first tile (loaded
#                 before the wait) from shared memory: the RoPE-inside same-bits tests (their early and late loads);
#                 with ktests, base_build and ab_decode, its measurement
#   ncu_attn_source Nsight Compute's per-instruction warp-stall samples of one batch-1 tensor-core decode attention
#                 (2B w4a16 + int8 KV, a steady step's sixth layer, in the engine; ncu runs kernels one at a time)
#   head_norm     the final norm computed in the lm head's kernel at one row (VLM_LM_HEAD_NORM=1, off by default): the
#                 engine's same-bits tests, then 2B and 7B w4a16 + int8 KV decode at batch 1 off then on, two rounds
#                 (HEAD_NORM_ROUNDS)
#   fp16_attention the tensor-core decode attention's fp16 form (VLM_DECODE_ATTENTION_MMA_FP16=1, the default since 12-07): the
#                 fp16-cache kernel tests (both kernels against the reference), compute-sanitizer on the fp16 form's,
#                 the RoPE-inside same-bits tests of the fp16 shapes, then 2B w4a16 and fp16 weights + fp16 KV decode at
#                 batch 1/16/64 and 7B w4a16 + fp16 KV at batch 1, off then on
#   etests_fp16   etests with that fp16 form on (the default since 12-07: as etests)
#   push_quick    push_sum's first look in little device time: one same-bits test, 2B w4a16 + int8 KV decode at batch 1
#                 off then on, bench/gemm at M = 1 on three 2B layers off then on
#   ncu_source    Nsight Compute's per-instruction warp-stall samples (SourceCounters) of one 2B batch-1 o GEMM in a
#                 steady decode (the decode kernel at 2 k16 steps a warp: nearly all of it fixed cost), with the pulled
#                 cluster sum (VLM_W4A16_DECODE_PUSH=0) and with the pushed one (=1, the default): their source
#                 pages as gzipped CSV, bench/ncu_source_top.py's ranking and listing of each
#   push_sum      the decode kernel's K slices summed by pushes to their owners (VLM_W4A16_DECODE_PUSH=1, the default)
#                 against the pulled sum (=0): both sums' tests (cluster arrangements against the reference, the same
#                 bits), the engine's GPU tests with the pushed one, 2B w4a16 + int8 KV decode at batch 1/4 and 7B at
#                 1 off then on (twice), bench/gemm at M = 1 off then on
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
STEPS=${STEPS:-build tests gemm decode}
# A step name the script does not run (a typo, or a function never given its `step NAME SECONDS` line below) would
# otherwise be passed over in silence and the scarce call spent on the others: refuse the call before any work.
unknown_steps=$(for s in $STEPS; do grep -qE "^step $s [0-9]+" "${BASH_SOURCE[0]}" || echo "$s"; done)
if [ -n "$unknown_steps" ]; then
  echo "unknown step(s): $(echo $unknown_steps) (the steps are the script's 'step NAME SECONDS' lines)" >&2
  exit 2
fi
# The device call's own limit (600 s) kills everything at once, the last step's partial log and the archive with
# it; each step is therefore also cut off where the call's budget would end (CALL_BUDGET_S, from the script's
# start, default 585), leaving the seconds to pack what was done.
CALL_BUDGET_S=${CALL_BUDGET_S:-585}
RES=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python:$PWD/tests VLMSERVE_LIB=$PWD/build-gpu/libvlmcore.so
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$RES/gpu.txt" 2>&1
# The GPU in the serving runs' file names (h100, h200, ...; "gpu" where nvidia-smi does not say).
GPU_TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | grep -oiE "[a-z][0-9]{2,3}" |
  head -n 1 | tr '[:upper:]' '[:lower:]')
export GPU_TAG=${GPU_TAG:-gpu}
# A library built without cuBLAS runs the lm head and prefill GEMMs on its own SIMT kernel, many times slower:
# say so at the top of every log (a library built on a machine whose toolkit lacks cuBLAS is such a one).
if [ -f build-gpu/libvlmcore.so ] && ! ldd build-gpu/libvlmcore.so 2>/dev/null | grep -q libcublas; then
  echo "WARNING: build-gpu/libvlmcore.so does not link cuBLAS: dense GEMMs run on the library's own kernel" |
    tee -a "$RES/gpu.txt"
fi

step() {  # step NAME SECONDS: runs the function NAME under a time limit (and within the call's budget)
  local name=$1 limit=$2 left
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  left=$((CALL_BUDGET_S - SECONDS - 5))
  if [ "$left" -lt 15 ]; then
    echo "== $name skipped: the call's budget is spent ($SECONDS s of $CALL_BUDGET_S)" | tee "$RES/$name.log"
    pack
    return 0
  fi
  if [ "$left" -lt "$limit" ]; then
    echo "== $name cut to ${left} s (the call's budget; its own limit ${limit} s)"
    limit=$left
  fi
  echo "== $name ($(date -u +%H:%M:%S))"
  # -k: a step that ignores the TERM (or cleans up for long: the serving benchmark stops its services and MPS
  # daemon on it) is killed 30 s later.
  timeout -k 30 "$limit" bash -o pipefail -c "$name" 2>&1 | tee "$RES/$name.log" | tail -n 30
  echo "== $name exit ${PIPESTATUS[0]}"
  pack  # after every step, so a call cut off by its time limit still brings back what finished
}
pack() { tar czf "$OUT/results-${STEPS// /-}.tgz" -C "$RES" .; }

prefill_rows() {  # prefill_rows LABEL SETTING FILE: bench/decode.py's rows of our engine, prefill median and tok/s
  python3 -c "import json,sys; [print(sys.argv[1], sys.argv[2], r['batch'], 'prefill_s_median', r['prefill_s_median'], 'tok_s', round(r['tok_s']))
    for r in json.load(open(sys.argv[3]))['rows'] if r.get('engine') == 'vlmserve']" "$@"
}
prefill_settings() {  # prefill_settings LABEL SWITCH MIN_ROWS_VAR: 2B w4a16 + int8 KV at batch 1/64/128 with the
  # setting SWITCH off, on from its default rows, and on from 33 rows (MIN_ROWS_VAR; 0: the default), prefill_rows each
  local v
  for v in 0:0 1:0 1:33; do  # SWITCH:MIN_ROWS
    env "$2=${v%%:*}" "$3=${v#*:}" python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64,128 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/prefill_$1${v/:/_}.json" >/dev/null &&
      prefill_rows "$1" $v "$RES/prefill_$1${v/:/_}.json"
  done
}
build() {  # CUTLASS's headers from .gpu-carry/cutlass where carried (the device image has no network)
  local cutlass=()
  [ -f .gpu-carry/cutlass/include/cutlass/cutlass.h ] && cutlass=(-DVLM_CUTLASS_DIR="$PWD/.gpu-carry/cutlass")
  # Said in the call's output: results of mid-size w4a16 batches differ with and without it (decode.md records which).
  [ ${#cutlass[@]} -eq 0 ] && echo "build: no CUTLASS headers carried (.gpu-carry/cutlass): no w4a16 GEMM runs through CUTLASS"
  cmake -S . -B build-gpu -DVLM_CUDA_ARCHITECTURES=90a -DVLM_BUILD_TESTS=OFF "${cutlass[@]}" >/dev/null &&
    cmake --build build-gpu -j "$(nproc)" | grep -E "error|warning" || true
  test -f build-gpu/libvlmcore.so
}
gemm() {
  python3 bench/gemm.py --ms 1,16 --out-dir "$RES/gemm" | grep -E "^\| |^- M"
  VLM_W4A16_DECODE=0 python3 bench/gemm.py --ms 1,16 --out-dir "$RES/gemm_general" | grep -E "^- M"
}
decode() {
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b.json" | tail -n 12
  python3 bench/decode.py --models 2b --weights fp16 --kv int8 --batches 1 --peer-batches 1 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_fp16.json" | tail -n 4
  VLM_W4A16_DECODE=0 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16 \
    --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_general.json" | tail -n 5
  python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches 1 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_7b.json" | tail -n 4
  for b in 1 2; do  # fewer key slices per attention call (the default aims at 8 blocks per SM)
    VLM_ATTENTION_SPLIT_BLOCKS_PER_SM=$b python3 bench/decode.py --models 2b --weights w4a16 --kv int8 \
      --batches 1,16 --peer-batches 0 --measure-bandwidth --work /tmp/decode-models \
      --out "$RES/decode_2b_split$b.json" | tail -n 3
  done
}

tests() {
  python3 -m pytest -q -m "gpu and not slow" tests/kernels tests/engine/test_cuda_backend.py
}
decode_new() {  # 2B w4a16 + int8 KV at batch 1/16/64; batch 1 again with the norms as kernels of their own
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b.json" | tail -n 5
  VLM_FUSED_NORM=0 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_unfused_norm.json" | tail -n 3
}
dtests() {  # the decode-size w4a16 kernel and its fused norm in every plan arrangement (each plan test checks ~20 s
  # of shapes in a process of its own: ~230 s in all on the H200; one line a test, so a cut step says which passed)
  python3 -m pytest -v -rfE -m gpu tests/kernels/test_w4a16_rms_norm.py tests/kernels/test_w4a16_decode.py |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
}
decode_table() {  # 2B w4a16 + int8 KV at batch 1-128, fp16 weights at batch 1 beside transformers
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64,128 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b.json" | tail -n 6
  python3 bench/decode.py --models 2b --weights fp16 --kv int8 --batches 1 --peer-batches 1 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_fp16.json" | tail -n 4
}
serve_site() {  # carried wheels (.gpu-carry/wheels, with typing_extensions) into /tmp/serve-site, if any, and that
  # folder first on the caller's PYTHONPATH
  [ -d .gpu-carry/wheels ] || return 0
  python3 -m pip install -q --no-index --find-links .gpu-carry/wheels --target /tmp/serve-site grpcio==1.85.3 \
    protobuf==7.36.2 grpcio-health-checking grpcio-reflection prometheus_client || return 1
  export PYTHONPATH=/tmp/serve-site:$PYTHONPATH
}
serve_leads() {  # the same stack at concurrency 1/64/256: JPEG requests, then the services as two processes
  serve_site || return 1
  for v in "--image-format jpeg --layout stack --stem jpeg" "--image-format png --layout services --stem services"; do
    python3 bench/serve.py --model-name internvl-2b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
      --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,64,256 --out-dir "$RES/serve" $v 2>&1 |
      grep -E "c=[0-9]+:|ABORT|Error" | tail -n 8
  done
}
serve() {  # model (a), w4a16 + int8 KV, vision batch 16, concurrency 1/16/64/256, no peer; bench/serve.py's
  # defaults otherwise: JPEG requests, the services as two processes
  # The image lacks grpcio-health-checking and -reflection: wheels carried in .gpu-carry/wheels (with the
  # grpcio and protobuf the generated modules were made for) go into a site folder of their own.
  serve_site || return 1
  python3 -c "import grpc, grpc_health, prometheus_client, vlmserve._proto" || return 1
  python3 bench/serve.py --model-name internvl-2b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16,64,256 --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 40
}
decode_matrix() {  # decode_matrix MODEL WEIGHTS PEERS: issue 3's whole bench/decode table for one model and weight
  # set: KV fp16/int8/int4 at batch 1/16/64/128, transformers beside the fp16 weights at PEERS (0: none); one JSON
  # each, put together with `bench/decode.py --render DOC --out A --merge B ...`
  python3 bench/decode.py --models "$1" --weights "$2" --kv fp16,int8,int4 --batches 1,16,64,128 --peer-batches "$3" \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_matrix_$1_${2//,/_}.json" 2>&1 |
    grep -E "tok/s|FAILED|Error" | tail -n 40
}
decode_matrix_2b() { decode_matrix 2b fp16,w4a16 1,16,64; }
decode_matrix_7b_fp16() { decode_matrix 7b fp16 1,16; }
decode_matrix_7b_w4a16() { decode_matrix 7b w4a16 0; }
decode_ab() {  # decode_ab SETTING STEM B2 B7: 2B w4a16 + int8 KV decode at batches B2 and 7B at B7 (- for none),
  # SETTING=0 then 1
  local var=$1 stem=$2 b2=$3 b7=$4 on
  for on in 0 1; do
    env "$var=$on" python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches "$b2" --peer-batches 0 \
      --work /tmp/decode-models --out "$RES/decode_2b_$stem$on.json" 2>&1 | grep -E "tok/s" | tail -n 3
    [ "$b7" = - ] && continue
    env "$var=$on" python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches "$b7" --peer-batches 0 \
      --work /tmp/decode-models --out "$RES/decode_7b_$stem$on.json" 2>&1 | grep -E "tok/s" | tail -n 1
  done
}
early_loads() {  # the tensor-core decode attention's first tiles loaded before its wait (=1) against after: the
  # no-bits test, then 2B w4a16 + int8 KV at batch 1/16/64 and 7B at batch 1, off then on, one call
  python3 -m pytest -q -m gpu tests/engine/test_cuda_backend.py -k rope_inside 2>&1 | tail -n 2
  decode_ab VLM_ATTENTION_EARLY_LOADS early 1,16,64 1
}
int4_attention() {  # the tensor-core decode attention's int4 form: the kernel tests (int4 and int8 cases), compute-
  # sanitizer on them, the RoPE-inside no-bits tests and the engine's int4 tests, then 2B w4a16 + int4 KV decode at
  # batch 1/16/64 on the CUDA-core kernel (VLM_DECODE_ATTENTION_MMA_INT4=0) and the tensor-core form, and int8 beside
  python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py 2>&1 | tail -n 3
  VLM_DECODE_ATTENTION_MMA_INT4=1 PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck \
    --error-exitcode 9 python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py -k "test_matches_reference and int4" \
    2>&1 | tail -n 3
  python3 -m pytest -q -m gpu tests/engine/test_cuda_backend.py -k rope_inside 2>&1 | tail -n 3
  VLM_DECODE_ATTENTION_MMA_INT4=1 python3 -m pytest -q -m gpu tests/engine/test_cuda_backend.py -k int4 2>&1 | tail -n 3
  for on in 0 1; do
    VLM_DECODE_ATTENTION_MMA_INT4=$on python3 bench/decode.py --models 2b --weights w4a16 --kv int4 --batches 1,16,64 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_int4_mma$on.json" 2>&1 | grep -E "tok/s" | tail -n 3
  done
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64 --peer-batches 0 \
    --work /tmp/decode-models --out "$RES/decode_2b_int8_beside.json" 2>&1 | grep -E "tok/s" | tail -n 3
}
decode_plan_sweep() {  # every pinned plan of the decode-size w4a16 kernel against the default, then its tests (which
  # also check that the plan the library reports is the pinned one)
  python3 bench/decode_plan_sweep.py --out "$RES/decode_plan_sweep.json" 2>&1 | tail -n 24
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_decode.py 2>&1 | tail -n 2
}
cutlass_file() {  # the CUTLASS mixed-input GEMM's test file once, on the engine's own tiles and schedules
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed"
}
cutlass_tests() {  # the CUTLASS mixed-input GEMM's tests (each schedule), then the engine with it against the CPU
  python3 -c "from vlmserve.kernels import w4a16_cutlass_built as b; print('CUTLASS GEMM built:', b())"
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed"
  # the same with the persistent data-parallel schedule (no K split across SMs)
  VLM_W4A16_CUTLASS_STREAMK=0 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/no stream-K: /'
  # every shape on tiles of 64 weight rows (the ping-pong schedule), then of 128 (stream-K)
  VLM_W4A16_CUTLASS_TILE_M=64 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/tiles of 64: /'
  VLM_W4A16_CUTLASS_TILE_M=128 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/tiles of 128: /'
  # and on tiles of 256 tokens
  VLM_W4A16_CUTLASS_TILE_N=256 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/256 tokens: /'
  # and on K tiles of 64, then of 128 (the shapes of groups of 128), each on every shape
  VLM_W4A16_CUTLASS_TILE_K=64 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/K tiles of 64: /'
  VLM_W4A16_CUTLASS_TILE_K=128 python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py \
    -k "matches_reference" 2>&1 | grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/K tiles of 128: /'
  # and in clusters of 2 tiles of 128 rows sharing the activations' loads (K tiles of 64)
  VLM_W4A16_CUTLASS_CLUSTER=2 VLM_W4A16_CUTLASS_TILE_M=128 VLM_W4A16_CUTLASS_TILE_K=64 python3 -m pytest -q -rfE -m gpu \
    tests/kernels/test_w4a16_cutlass.py -k "matches_reference" 2>&1 |
    grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed 's/^/clusters of 2: /'
  python3 -m pytest -q -m gpu tests/engine/test_cuda_backend.py -k cutlass_prefill 2>&1 | tail -n 3
}
cutlass_gemm() {  # cutlass_tests (unless CUTLASS_GEMM_TESTS=0), then bench/gemm from 64 rows (CUTLASS_GEMM_LAYERS)
  # and its other tiles
  [ "${CUTLASS_GEMM_TESTS:-1}" = 0 ] || cutlass_tests
  python3 bench/gemm.py --ms "${CUTLASS_GEMM_MS:-64,256,2048}" \
    --layers "${CUTLASS_GEMM_LAYERS:-7B.qkv,7B.o,7B.gate_up,7B.down}" --out-dir "$RES/gemm_cutlass" |
    grep -E "^\| |^- M|^  - "
  local t
  for t in ${CUTLASS_TILE_VARIANTS:-}; do  # other tiles at every M: N:64 / N:128 / N:256 tokens, M:64 weight rows
    env "VLM_W4A16_CUTLASS_TILE_${t%%:*}=${t#*:}" python3 bench/gemm.py --ms "${CUTLASS_GEMM_MS:-64,256,2048}" \
      --layers "${CUTLASS_GEMM_LAYERS:-7B.qkv,7B.o,7B.gate_up,7B.down}" --out-dir "$RES/gemm_cutlass_tile${t/:/}" |
      grep -E "^- M|^  - " | sed "s/^/tile $t: /"
  done
}
cutlass_schedules() {  # the CUTLASS GEMM's scheduler settings at 32-256 rows (bench/cutlass_schedules.py: K cut in
  # 2/4, partial sums unordered, data-parallel, other tiles) against torch fp16, after its tests with the split and
  # sum settings (CUTLASS_SCHED_TESTS=0 leaves them out)
  local v
  if [ "${CUTLASS_SCHED_TESTS:-1}" != 0 ]; then
    for v in VLM_W4A16_CUTLASS_SPLITS=2 VLM_W4A16_CUTLASS_SPLITS=4 VLM_W4A16_CUTLASS_UNORDERED_SUMS=1; do
      env "$v" python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_cutlass.py -k "matches_reference" 2>&1 |
        grep -E "relative errors|^FAILED|^ERROR|passed|failed" | sed "s/^/$v: /"
    done
  fi
  python3 bench/cutlass_schedules.py --ms "${CUTLASS_SCHED_MS:-32,64,128,256}" \
    ${CUTLASS_SCHED_LAYERS:+--layers "$CUTLASS_SCHED_LAYERS"} ${CUTLASS_SCHED_SETTINGS:+--settings "$CUTLASS_SCHED_SETTINGS"} \
    --out "$RES/cutlass_schedules.json" 2>&1 | tail -n 60
}
ncu_cutlass() {  # Nsight Compute on the CUTLASS GEMM with the engine's tiles at 64 rows (7B q/k/v, 7B o, 2B gate_up)
  # and 128 rows (7B q/k/v): what holds one SM's 64-deep K step of a 128-row tile at ~0.35 us (warp stalls, issue
  # activity, the pipeline's shared memory), one call a shape, caches flushed before each (ncu's default)
  cat >/tmp/ncu_cutlass.py <<'PY'
import numpy as np, torch
from vlmserve.kernels import pack_w4a16, w4a16_cutlass_gemm, w4a16_cutlass_prepare
rng = np.random.default_rng(0)
for (n, k), m in [((12288, 4096), 64), ((4096, 4096), 64), ((16384, 2048), 64), ((12288, 4096), 128)]:
    q = rng.integers(0, 2**31, size=(k, n // 8), dtype=np.int64).astype(np.int32)
    z = rng.integers(0, 2**31, size=(k // 128, n // 8), dtype=np.int64).astype(np.int32)
    packed, sz = pack_w4a16(q, z, np.full((k // 128, n), 0.01, dtype=np.float16), 128)
    p = w4a16_cutlass_prepare(torch.from_numpy(packed).cuda(), torch.from_numpy(sz.view(np.int16)).cuda(), n, k, 128)
    w4a16_cutlass_gemm(torch.randn(m, k, device="cuda", dtype=torch.float16), p, n, 128)
torch.cuda.synchronize()
PY
  ncu_run ncu_cutlass "device_kernel" /tmp/ncu_cutlass.py
}
cutlass_memcheck() {  # compute-sanitizer memcheck on the CUTLASS GEMM's tests (the first errors in full)
  compute-sanitizer --tool memcheck --print-limit 4 --target-processes all --error-exitcode 1 python3 -m pytest -q \
    -m gpu tests/kernels/test_w4a16_cutlass.py 2>&1 | grep -vE "^=========     Host Frame|^========= *$" | head -n 60
}
cutlass_prefill() {  # 2B prefill at batch 1/64 and decode at 64/128 without and with the CUTLASS GEMM (from its
  # default 129 rows, and from 33: the wgmma kernel's range too)
  prefill_settings cutlass VLM_W4A16_CUTLASS VLM_W4A16_CUTLASS_MIN_ROWS
}
cutlass_engine() {  # the engine without and with the CUTLASS GEMM (its default rows: wide layers from 32, the rest
  # from 97): 2B/7B w4a16 + int8 KV, prefill of 512-token prompts at batch 1 and decode at 32/64/128 (prefill_rows)
  local m v
  for m in 2b 7b; do
    for v in 0 1; do
      VLM_W4A16_CUTLASS=$v python3 bench/decode.py --models $m --weights w4a16 --kv int8 --batches 1,32,64,128 \
        --peer-batches 0 --work /tmp/decode-models --out "$RES/cutlass_engine_${m}_$v.json" >/dev/null &&
        prefill_rows "$m cutlass" $v "$RES/cutlass_engine_${m}_$v.json"
    done
  done
}
etests_cutlass() {  # etests with the CUTLASS GEMM on (VLM_W4A16_CUTLASS=1, the default where a Hopper GPU runs it)
  VLM_W4A16_CUTLASS=1 etests
}
layer_plans() {  # one layer's plan at a time in the engine: the sweep's fastest alone, which pinned for every layer
  # at once decoded slower (docs/benchmarks/gemm.md, 2026-12-05)
  local pin
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,4 --peer-batches 0 \
    --work /tmp/decode-models --out "$RES/layer_plans_2b_default.json" 2>&1 | grep -E "tok/s" | sed 's/^/default /'
  for pin in 4096x2048:1,1,16 2048x2048:1,2,16 16384x2048:1,1,8 2048x8192:2,6,8; do
    VLM_W4A16_DECODE_PLANS=$pin python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,4 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/layer_plans_2b_${pin%%:*}.json" 2>&1 |
      grep -E "tok/s" | sed "s/^/$pin /"
  done
  python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches 1 --peer-batches 0 \
    --work /tmp/decode-models --out "$RES/layer_plans_7b_default.json" 2>&1 | grep -E "tok/s" | sed 's/^/default /'
  for pin in 12288x4096:1,1,16 4096x4096:1,2,8 22016x4096:1,1,8; do
    VLM_W4A16_DECODE_PLANS=$pin python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches 1 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/layer_plans_7b_${pin%%:*}.json" 2>&1 |
      grep -E "tok/s" | sed "s/^/$pin /"
  done
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_decode.py -k "one_shapes" 2>&1 | tail -n 2
}
decode_7b() {  # the 7B shape at batch 1, w4a16 + int8 KV
  python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches 1 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_7b.json" | tail -n 3
}
wgtests() {  # the wgmma w4a16 kernel's tests alone (one line a test)
  python3 -m pytest -v -rfE -m gpu tests/kernels/test_w4a16_wgmma.py | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
}
gtests() {  # the general w4a16 kernel's tests alone (one line a test)
  python3 -m pytest -v -rfE -m gpu tests/kernels/test_w4a16_gemm.py | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
}
wtests() {  # the w4a16 kernels alone
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_gemm.py tests/kernels/test_w4a16_decode.py
}
etests() {  # the engine on the GPU against the CPU backend (one line a test as it ends: a step cut off still says
  # which passed)
  python3 -m pytest -v -rfE --durations=10 -m "gpu and not slow" tests/engine/test_cuda_backend.py |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E |s call"
}
dequant_chunks() {  # the prefill path's dequantization in L2-sized stretches of output columns
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_gemm.py -k "dequantiz" 2>&1 | tail -n 2
  python3 -m pytest -q -m gpu tests/engine/test_cuda_backend.py -k "dequantized_stretches" 2>&1 | tail -n 2
  for mb in 0 8 16 32; do
    VLM_DEQUANT_CHUNK_MB=$mb python3 bench/gemm.py --ms 256,2048 --layers "${DEQUANT_CHUNK_LAYERS:-2B.qkv,2B.o,2B.gate_up,2B.down,7B.qkv,7B.o,7B.gate_up,7B.down}" \
      --out-dir "$RES/gemm_dequant_chunk$mb" | grep -E "^- M"
  done
  [ -n "${DEQUANT_CHUNK_GEMM_ONLY:-}" ] && return 0  # the GEMMs alone (the targets' 7B shapes: a shorter call)
  VLM_DEQUANT_CHUNK_MB=16 python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
  for mb in 0 16; do
    VLM_DEQUANT_CHUNK_MB=$mb python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/prefill_chunk$mb.json" >/dev/null &&
      python3 -c "import json,sys; [print(sys.argv[2], r['batch'], 'prefill_s_median', r['prefill_s_median'])
        for r in json.load(open(sys.argv[1]))['rows'] if r.get('engine') == 'vlmserve']" "$RES/prefill_chunk$mb.json" $mb
  done
}
dequant() {  # the w4a16 dequantization (prefill-sized GEMMs' first half): its exactness test, then bench/gemm at 256/2048
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_gemm.py -k dequantize
  python3 bench/gemm.py --ms 256,2048 --out-dir "$RES/gemm_dequant" | grep -E "^\| |^- M"
}
wgmma() {  # the wgmma w4a16 kernel (VLM_W4A16_WGMMA=1 block form, 2 strip form; 17 rows up): its reference checks,
  # compute-sanitizer on them, bench/gemm at M = 16/64/256/2048 without and with each form (same call), the engine
  # tests with each
  python3 -m pytest -q -s -m gpu tests/kernels/test_w4a16_wgmma.py 2>&1 | tail -n 16
  for form in 1 2; do
    VLM_W4A16_WGMMA=$form PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck \
      --error-exitcode 9 python3 tests/kernels/check_w4a16_wgmma.py 2>&1 | tail -n 4
  done
  python3 bench/gemm.py --ms 16,64,256,2048 --out-dir "$RES/gemm_before_wgmma" | grep -E "^- M"
  for form in 1 2; do
    VLM_W4A16_WGMMA=$form python3 bench/gemm.py --ms 16,64,256,2048 --out-dir "$RES/gemm_wgmma$form" | grep -E "^- M"
    VLM_W4A16_WGMMA=$form python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
  done
}
gemm_codes() {  # the general kernel's codes form up to 16 rows (VLM_W4A16_GEMM_CODES=1) against the default
  python3 -m pytest -q -m gpu tests/kernels/test_w4a16_gemm_codes.py tests/kernels/test_w4a16_decode.py \
    tests/kernels/test_stream_read.py 2>&1 | tail -n 4
  VLM_W4A16_GEMM_CODES=1 VLM_W4A16_DECODE=0 PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer \
    --tool memcheck --error-exitcode 9 python3 tests/kernels/check_w4a16_shapes.py 2>&1 | tail -n 4
  VLM_W4A16_GEMM_CODES=0 python3 bench/gemm.py --ms 5,8,12,16 --read-floor --out-dir "$RES/gemm_codes0" | grep -E "^\| |^- M"
  VLM_W4A16_GEMM_CODES=1 python3 bench/gemm.py --ms 5,8,12,16 --out-dir "$RES/gemm_codes1" | grep -E "^\| |^- M"
}
codes_engine() {  # the engine with the codes form: its GPU tests, then decode at batch 8/16 without and with it
  VLM_W4A16_GEMM_CODES=1 python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
  for c in 0 1; do
    VLM_W4A16_GEMM_CODES=$c python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 8,16 \
      --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_codes$c.json" | tail -n 3
  done
}
overlap() {  # overlapped steps (VLM_OVERLAP_STEPS=1): their GPU test, the engine's GPU tests with them, then 2B
  # w4a16 + int8 KV decode at batch 1/16/64 without and with them
  python3 -m pytest -q -m gpu tests/engine/test_overlapped_steps.py 2>&1 | tail -n 4
  VLM_OVERLAP_STEPS=1 python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py \
    tests/engine/test_device_sampling.py 2>&1 | tail -n 3
  for o in 0 1; do
    VLM_OVERLAP_STEPS=$o python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64 \
      --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_overlap$o.json" | tail -n 4
  done
}
serve_overlap() {  # serving at 1/64/256 (--stream-interval 4) with steps one at a time, then overlapped
  local si="--lm-flag=--stream-interval=4"
  (export VLM_OVERLAP_STEPS=0; serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-overlap0 $si")
  (export VLM_OVERLAP_STEPS=1; serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-overlap1 $si")
}
mps_path() {  # nvidia-cuda-mps-control on PATH, from the driver's folders if need be; says where it is or why not
  command -v nvidia-cuda-mps-control && return 0
  for d in /usr/local/nvidia/bin /usr/bin /usr/local/bin /usr/local/cuda/bin; do
    if [ -x "$d/nvidia-cuda-mps-control" ]; then export PATH="$d:$PATH"; echo "$d/nvidia-cuda-mps-control"; return 0; fi
  done
  echo "nvidia-cuda-mps-control not found (PATH, /usr/local/nvidia/bin, /usr/bin); nvidia tools there:"
  ls /usr/local/nvidia/bin /usr/bin 2>/dev/null | grep -i nvidia | head -n 20
  return 1
}
serve_mps() {  # the two service processes sharing the GPU through NVIDIA MPS (bench/serve.py --mps: the run's own
  # control daemon), then in time slices (the default), model (a) w4a16 + int8 KV at 1/64/256, --stream-interval 4
  mps_path || return 1
  serve_site || return 1
  # The toy stack through MPS first (a minute): where MPS does not work here, say why and spend no more of the call
  python3 bench/serve.py --smoke --layout services --mps --no-peer --out-dir "$RES/serve-mps-smoke" \
    --work /tmp/serve-smoke-work 2>&1 | grep -E "c=[0-9]+:|ABORT|Error|MPS" | tail -n 12
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "serve_mps: the toy stack did not run through MPS; full runs skipped"; return 1; }
  local si="--lm-flag=--stream-interval=4"
  # MPS first: the run more likely to fail or hang, while the time slices' figures are known from earlier calls
  serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-mps $si --mps" "--stem internvl-2b-$GPU_TAG-slices $si"
}
serve_mps_acc() {  # MPS with 4 gRPC acceptors in each service (the two leads at 256 together), 64/256
  mps_path || return 1
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-acc4 --lm-flag=--stream-interval=4 --mps --lm-flag=--grpc-acceptors=4 \
--vision-flag=--grpc-acceptors=4"
}
serve_mps_prep16() {  # 16 preprocessing workers (the default takes 8 of the host's cores; at 256 through MPS an
  # image waited 167 ms to be prepared, 10 ms alone, with 2.5 of 16 cores busy), through MPS at 64/256
  mps_path || return 1
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-prep16 --lm-flag=--stream-interval=4 --mps \
--vision-flag=--preprocess-threads=16"
}
serve_layouts() {  # the two services as two processes (GPU time slices between their contexts) against one process
  # (`serve stack`: one context, kernels side by side, one GIL), model (a) w4a16 + int8 KV at 64/256
  local si="--lm-flag=--stream-interval=4"
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-two-processes $si" "--stem internvl-2b-$GPU_TAG-one-process $si --layout stack"
}
serve_overlap1() {  # serving at 1/64/256 (--stream-interval 4) with overlapped steps only
  (export VLM_OVERLAP_STEPS=1; serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-overlap1 --lm-flag=--stream-interval=4")
}
env_setting() {  # env_setting NAME VALUE: env(1) arguments that set NAME=VALUE, or unset NAME for "default"
  if [ "$2" = default ]; then echo -u "$1"; else echo "$1=$2"; fi
}
wgmma_setting() { env_setting VLM_W4A16_WGMMA "$1"; }  # wgmma_setting FORM
strip_default() {  # the strip form as the default from 17 to 128 rows: the wgmma and general-kernel tests (the default
  # routing and each forced form), compute-sanitizer on the default, bench/gemm at 32-256 rows with the wgmma kernel
  # off (VLM_W4A16_WGMMA=0) and the strip form at every M (2), the engine tests, 2B decode at batch 64/128 off vs
  # default
  python3 -m pytest -q -s -m gpu tests/kernels/test_w4a16_wgmma.py tests/kernels/test_w4a16_gemm.py 2>&1 |
    grep -E "checks|rows|passed|failed|FAIL|Error" | tail -n 20
  PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 tests/kernels/check_w4a16_wgmma.py 2>&1 | tail -n 4
  for form in 0 2; do
    VLM_W4A16_WGMMA=$form python3 bench/gemm.py --ms 32,64,96,128,192,256 --out-dir "$RES/gemm_strip_sweep$form" |
      grep -E "^- M"
  done
  python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
  for form in 0 default; do
    env $(wgmma_setting $form) python3 bench/decode.py \
      --models 2b --weights w4a16 --kv int8 --batches 64,128 --peer-batches 0 --work /tmp/decode-models \
      --out "$RES/decode_2b_strip_$form.json" >/dev/null &&
      python3 -c "import json,sys; [print('wgmma', sys.argv[2], 'batch', r['batch'], 'tok_s', round(r['tok_s']),
        'prefill_s', r['prefill_s_median']) for r in json.load(open(sys.argv[1]))['rows'] if r.get('engine') == 'vlmserve']" \
        "$RES/decode_2b_strip_$form.json" $form
  done
}
dequant_129() {  # dequantize + cuBLAS from 129 rows where the strip form runs: the routing checks (default), bench/gemm
  # at M = 160/192/224 with the default path and with the strip form forced, 2B decode at batch 192 with the wgmma
  # kernel off (the general kernel, the old path) and default, the engine tests; serving at 64/256 (default) then
  # 256 with the wgmma kernel off (both --stream-interval 4; needs the serving carry)
  python3 -m pytest -q -s -m gpu tests/kernels/test_w4a16_wgmma.py -k default 2>&1 |
    grep -E "checks|rows|expected|passed|failed"
  for form in default 2; do
    env $(wgmma_setting $form) python3 bench/gemm.py \
      --ms 160,192,224 --out-dir "$RES/gemm_129_$form" | grep -E "^- M"
  done
  for form in 0 default; do
    env $(wgmma_setting $form) python3 bench/decode.py \
      --models 2b --weights w4a16 --kv int8 --batches 192 --peer-batches 0 --work /tmp/decode-models \
      --out "$RES/decode_2b_129_$form.json" 2>&1 | grep -E "tok/s"
  done
  python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-strip --lm-flag=--stream-interval=4"
  VLM_W4A16_WGMMA=0 serve_runs 256 "--stem internvl-2b-$GPU_TAG-nowgmma --lm-flag=--stream-interval=4"
}
wgmma_cluster() {  # the wgmma kernel's K slices summed in thread-block clusters (VLM_W4A16_WGMMA_CLUSTER=1) against
  # fp32 partials + a second kernel (the default): checks with clusters, compute-sanitizer, bench/gemm at 32/64/128
  # rows, 2B w4a16 + int8 KV decode at batch 64/128, each without and with
  python3 -m pytest -q -s -m gpu tests/kernels/test_w4a16_wgmma.py -k cluster 2>&1 |
    grep -E "checks|rows|expected|passed|failed"
  VLM_W4A16_WGMMA_CLUSTER=1 PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck \
    --error-exitcode 9 python3 tests/kernels/check_w4a16_wgmma.py 2>&1 | tail -n 4
  for cl in 0 1; do
    VLM_W4A16_WGMMA_CLUSTER=$cl python3 bench/gemm.py --ms 32,64,128 --out-dir "$RES/gemm_cluster$cl" | grep -E "^- M"
    VLM_W4A16_WGMMA_CLUSTER=$cl python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 64,128 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_cluster$cl.json" 2>&1 | grep -E "tok/s"
  done
  VLM_W4A16_WGMMA_CLUSTER=1 python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 |
    tail -n 2
}
cluster_auto() {  # K slices summed in clusters where the plan says so (the default) against always from partials
  # (VLM_W4A16_WGMMA_CLUSTER=0): the checks with the default, partials and clusters, bench/gemm at 32/64/128 rows,
  # 2B w4a16 + int8 KV decode at batch 64/128, the engine tests
  python3 -m pytest -q -s -m gpu tests/kernels/test_w4a16_wgmma.py -k "default" 2>&1 |
    grep -E "checks|rows|expected|plan|passed|failed"
  for cl in 0 default; do
    env $(env_setting VLM_W4A16_WGMMA_CLUSTER $cl) python3 bench/gemm.py --ms 32,64,128 --out-dir "$RES/gemm_cluster_$cl" | grep -E "^- M"
    env $(env_setting VLM_W4A16_WGMMA_CLUSTER $cl) python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 64,128 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_cluster_$cl.json" 2>&1 | grep -E "tok/s"
  done
  python3 -m pytest -q -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 | tail -n 2
}
wgmma_engine() {  # the engine with each wgmma form (VLM_W4A16_WGMMA=0/1/2): 2B w4a16 + int8 KV decode at batch 64 and
  # 128 (prefill of those batches included), then serving at 64/256 with --stream-interval 4
  for form in 0 1 2; do
    VLM_W4A16_WGMMA=$form python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 64,128 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_wgmma$form.json" >/dev/null &&
      python3 -c "import json,sys; [print('form', sys.argv[2], 'batch', r['batch'], 'tok_s', round(r['tok_s']),
        'prefill_s', r['prefill_s_median']) for r in json.load(open(sys.argv[1]))['rows'] if r.get('engine') == 'vlmserve']" \
        "$RES/decode_2b_wgmma$form.json" $form
  done
  for form in 0 2; do
    VLM_W4A16_WGMMA=$form serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-wgmma$form --lm-flag=--stream-interval=4"
  done
}
wgmma_ncu() {  # Nsight Compute on the wgmma kernel at M = 256 (NCU_MS: other row counts; NCU_FORM: 1 or 2)
  for m in ${NCU_MS:-256}; do
    VLM_W4A16_WGMMA=${NCU_FORM:-2} ncu_gemm_at ncu_wgmma$m $m "w4a16_wgmma|splitk_reduce"
  done
}
gemm_apart() {  # bench/gemm with torch timed in the library's process (inline) and in one of its own (apart), at
  # GEMM_APART_MS rows (default 64,256) on GEMM_APART_LAYERS (the 7B layers): whether the order biases the ratios
  local how
  for how in inline apart; do
    python3 bench/gemm.py --peers "$how" --ms "${GEMM_APART_MS:-64,256}" \
      --layers "${GEMM_APART_LAYERS:-7B.qkv,7B.o,7B.gate_up,7B.down}" --out-dir "$RES/gemm_$how" |
      grep -E "^\| 7B|^\| 2B|^- M" | sed "s/^/$how /"
  done
}
gemm_full() {  # bench/gemm at every M of the targets (1, 16, 64, 256, 2048), one run
  python3 bench/gemm.py --out-dir "$RES/gemm_full" | grep -E "^- M"
}
gemm_new() {
  python3 bench/gemm.py --ms 1,16 --out-dir "$RES/gemm" | grep -E "^\| |^- M"
}
prefill() {  # prefill time of the same batches with each form of the prefill attention
  for form in tc simt; do
    VLM_PREFILL_ATTENTION=$form python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/prefill_$form.json" >/dev/null &&
      python3 -c "import json,sys; [print(sys.argv[2], r['batch'], 'prefill_s_median', r['prefill_s_median'], 'tok_s', round(r['tok_s']))
        for r in json.load(open(sys.argv[1]))['rows'] if r.get('engine') == 'vlmserve']" "$RES/prefill_$form.json" $form
  done
}
dense_prefill() {  # 4-bit layers also kept dequantized (VLM_PREFILL_DENSE_WEIGHTS=1): its tests, prefill and decode
  python3 -m pytest -v -rfE -m gpu tests/engine/test_cuda_backend.py -k "dense_prefill or dense_copies" |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
  # prefill at batch 1/64 and decode at 64/128 (17-128-row steps: the wgmma kernel), without the copies, with them
  # from the default 129 rows, and from 33 rows (VLM_PREFILL_DENSE_MIN_ROWS: cuBLAS on the copies in decode too)
  prefill_settings dense VLM_PREFILL_DENSE_WEIGHTS VLM_PREFILL_DENSE_MIN_ROWS
}
layer_tail() {  # the persistent layer tail (VLM_LAYER_TAIL=1): its tests (bit for bit against the kernel chain up to 4
  # rows, against the CPU backend up to 16; tiny families, a one-layer model and 2B-shaped layers)
  python3 -m pytest -v -rfE -m gpu tests/engine/test_cuda_backend.py -k "layer_tail" |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E " | head -n 40
}
layer_tail_memcheck() {  # compute-sanitizer memcheck on the tail's bit-for-bit test of one tiny model (its three engines)
  compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 python3 -m pytest -q -m gpu \
    "tests/engine/test_cuda_backend.py::test_layer_tail_changes_no_bits[llama_gqa_hd128-64]" 2>&1 | tail -n 4
}
layer_tail_bench() {  # 2B and 7B w4a16 + int8 KV decode at batch 1/4/8/16 without and with the layer tail, then a profiled
  # batch-1 step each way
  for t in 0 1; do
    VLM_LAYER_TAIL=$t python3 bench/decode.py --models 2b,7b --weights w4a16 --kv int8 --batches 1,4,8,16 --peer-batches 0 \
      --work /tmp/decode-models --out "$RES/decode_layer_tail$t.json" 2>&1 | grep -E "tok/s|FAILED"
  done
  echo "-- the tail with 8 ring stages first (2 blocks an SM where they fit)"
  VLM_LAYER_TAIL=1 VLM_LAYER_TAIL_RING=8 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16 \
    --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_layer_tail1_ring8.json" 2>&1 | grep -E "tok/s|FAILED"
  # Where a batch-1 step's time goes with and without it (eager steps, each phase timed by events: the report's
  # per-phase means, the tail's launch against the four GEMMs it replaces)
  for t in 0 1; do
    VLM_LAYER_TAIL=$t VLM_CUDA_PROFILE=1 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_layer_tail${t}_profile.json" 2>"$RES/profile_tail$t.txt" |
      grep -E "tok/s|FAILED"
    grep -E "decode, 1 rows|proj|layer tail|attention|lm head|total" "$RES/profile_tail$t.txt" | head -n 20
  done
}
layer_tail_wide() {  # the layer tail with its own cut (VLM_LAYER_TAIL_WIDE=1: about one long K slice a block): its
  # CPU comparisons, then 2B and 7B decode at batch 1/4/16 with the chain, the tail cut the chain's way and its own (8
  # ring stages first too), and a profiled batch-1 step of the wide cut
  python3 -m pytest -v -rfE -m gpu tests/engine/test_cuda_backend.py -k "layer_tail_at_up_to and wide" |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E " | head -n 20
  for v in 0:0:16 1:0:16 1:1:16 1:1:8; do  # TAIL:WIDE:RING
    IFS=: read -r t w r <<<"$v"
    echo "-- VLM_LAYER_TAIL=$t VLM_LAYER_TAIL_WIDE=$w VLM_LAYER_TAIL_RING=$r"
    VLM_LAYER_TAIL=$t VLM_LAYER_TAIL_WIDE=$w VLM_LAYER_TAIL_RING=$r python3 bench/decode.py --models 2b,7b \
      --weights w4a16 --kv int8 --batches 1,4,16 --peer-batches 0 --work /tmp/decode-models \
      --out "$RES/decode_tail${t}_wide${w}_ring$r.json" 2>&1 | grep -E "tok/s|FAILED"
  done
  VLM_LAYER_TAIL=1 VLM_LAYER_TAIL_WIDE=1 VLM_CUDA_PROFILE=1 python3 bench/decode.py --models 2b --weights w4a16 \
    --kv int8 --batches 1 --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_tail_wide_profile.json" \
    2>"$RES/profile_tail_wide.txt" | grep -E "tok/s|FAILED"
  grep -E "decode, 1 rows|layer tail|attention|lm head" "$RES/profile_tail_wide.txt" | head -n 12
}
serve_event_loops() {  # the LM service's port served by 2 event loops (--grpc-event-loops 2) against 1, through MPS
  # with the copies from 33 rows, at 64/256 (the wait before the LM handler at 256: docs/benchmarks/serving/README.md)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-loops2 $si --mps --lm-flag=--grpc-event-loops=2" \
      "--stem internvl-2b-$GPU_TAG-mps-loops1 $si --mps")
}
serve_prefill_hold() {  # new requests held up to 8 steps to enter together (--prefill-hold-steps 8) against 0, through
  # MPS with the copies from 33 rows, at 64/256: fewer, fuller prefill steps (the 256 target)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-hold8 $si --mps --lm-flag=--prefill-hold-steps=8" \
      "--stem internvl-2b-$GPU_TAG-mps-hold0 $si --mps")
}
serve_fronts() {  # the LM port served by 4 processes around the engine (--front-processes 4) against 1, through MPS
  # with the copies from 33 rows, at 256 (the wait before the LM handler: docs/benchmarks/serving/README.md)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 256 "--stem internvl-2b-$GPU_TAG-mps-fronts4 $si --mps --lm-flag=--front-processes=4" \
      "--stem internvl-2b-$GPU_TAG-mps-fronts1 $si --mps")
}
serve_fronts_vision2() {  # 4 LM front processes with 2 vision service processes (replicas on the GPU, MPS) against
  # 4 fronts and one vision process, copies from 33 rows, at 64/256: the vision service's preprocessing was the
  # wait once the fronts took the LM's (docs/benchmarks/serving/README.md)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-fronts4-vision2 $si --mps --lm-flag=--front-processes=4 --vision-processes 2" \
      "--stem internvl-2b-$GPU_TAG-mps-fronts4-vision1 $si --mps --lm-flag=--front-processes=4")
}
serve_fronts_hold() {  # 4 LM fronts, 2 vision processes, new requests held up to 8 steps (--prefill-hold-steps 8)
  # against no hold, MPS, copies from 33 rows, at 256 (fewer, fuller prefill steps once the engine is the bound)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4" f="--lm-flag=--front-processes=4 --vision-processes 2"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 256 "--stem internvl-2b-$GPU_TAG-mps-fronts4-vision2-hold8 $si --mps $f --lm-flag=--prefill-hold-steps=8" \
      "--stem internvl-2b-$GPU_TAG-mps-fronts4-vision2-hold0 $si --mps $f")
}
serve_fronts_low() {  # 4 LM fronts against one process at concurrency 1 and 16 (what the link's hop costs where the
  # wait before the handler is nil: whether fronts can be the default), MPS, copies from 33 rows
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 1,16 "--stem internvl-2b-$GPU_TAG-mps-fronts4-low $si --mps --lm-flag=--front-processes=4" \
      "--stem internvl-2b-$GPU_TAG-mps-fronts1-low $si --mps")
}
# The high-concurrency setting: 4 LM front processes and 2 vision processes, the services sharing the GPU through MPS
HIGH_CONCURRENCY="--mps --lm-flag=--front-processes=4 --vision-processes 2"
serve_c1_layouts() {  # concurrency 1 in the high-concurrency setting, then in the default layout (one process of
  # each service), MPS, copies from 33 rows: what the fronts cost a lone stream, and which LM process took it
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 1 "--stem internvl-2b-$GPU_TAG-c1-high $si $HIGH_CONCURRENCY" "--stem internvl-2b-$GPU_TAG-c1-default $si --mps")
}
serve_final() {  # the whole sweep with the high-concurrency setting (4 LM fronts, 2 vision processes), then with one
  # process of each (the default), then one LM process with 2 vision processes at 64/256 (which of the two the gain
  # needs); MPS, copies from 33 rows, --stream-interval 4. Its one call (2026-12-05 19:41) lost the machine mid-run
  # with nothing returned; serve_final_fronts is its first run alone
  serve_final_fronts || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 1,2,4,8,16,32,64,128,256 "--stem internvl-2b-$GPU_TAG-final-default $si --mps" &&
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-final-fronts1-vision2 $si --mps --vision-processes 2")
}
serve_final_fronts() {  # the whole sweep with 4 LM fronts and 2 vision processes only (serve_final's first run)
  mps_path || return 1
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 1,2,4,8,16,32,64,128,256 \
      "--stem internvl-2b-$GPU_TAG-final-fronts4-vision2 --lm-flag=--stream-interval=4 $HIGH_CONCURRENCY")
}
serve_targets_high() {  # the 64/256 targets: 4 LM fronts and 2 vision processes (the high-concurrency setting)
  mps_path || return 1
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-targets-high --lm-flag=--stream-interval=4 $HIGH_CONCURRENCY")
}
serve_targets_low() {  # the 1/16 targets in the default layout (one process of each service): fp16 against w4a16 +
  # int8 KV, transformers generate at batch 1 and 16 in the same run
  mps_path || return 1
  serve_site || return 1
  VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33 python3 bench/serve.py --model-name internvl-2b \
    --variants fp16,w4a16-kv8 --vision-batch 16 --output-tokens 128 --peer-batches 1,16 --calib-samples 16 \
    --work /tmp/serve-work --concurrency 1,16 --lm-flag=--stream-interval=4 --mps --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG-targets-low 2>&1 | grep -E "c=[0-9]+:|transformers|peer|rror|ABORT" | tail -n 20
}
serve_connections() {  # 4 LM fronts and 2 vision processes at 256: 64 client connections against 8 (SO_REUSEPORT
  # spreads connections, not calls, over the fronts: with 8, one process may hold half the streams)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 256 "--stem internvl-2b-$GPU_TAG-conn4 $si $HIGH_CONCURRENCY --streams-per-connection 4" \
      "--stem internvl-2b-$GPU_TAG-conn32 $si $HIGH_CONCURRENCY")
}
serve_tail_compare() {  # fp16 vs w4a16 + int8 KV serving at 1/2/4/8/16 with the layer tail and the dequantized copies
  # (the 1.3x target at every concurrency up to 16; fp16 weights have neither)
  serve_site || return 1
  VLM_LAYER_TAIL=1 VLM_PREFILL_DENSE_WEIGHTS=1 python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 \
    --vision-batch 16 --output-tokens 128 --no-peer --calib-samples 16 --work /tmp/serve-work \
    --concurrency 1,2,4,8,16 --out-dir "$RES/serve" --stem internvl-2b-$GPU_TAG-tail-compare 2>&1 |
    grep -E "c=[0-9]+:|rror|ABORT"
}
serve_dense_compare() {  # fp16 vs w4a16 + int8 KV serving at 1/16 with the dequantized copies (fp16 weights have none)
  serve_site || return 1
  VLM_PREFILL_DENSE_WEIGHTS=1 python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 \
    --vision-batch 16 --output-tokens 128 --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 \
    --out-dir "$RES/serve" --stem internvl-2b-$GPU_TAG-dense-prefill-compare 2>&1 | grep -E "c=[0-9]+:|rror|ABORT"
}
serve_dense_prefill() {  # through MPS (the better layout at 64/256, this session's H200 call), with then without
  # the copies; used from 33 rows (VLM_PREFILL_DENSE_MIN_ROWS: cuBLAS on the copies in 33-128-row decode steps too,
  # as in the H200 runs that met the 256 target)
  mps_path || return 1
  local si="--lm-flag=--stream-interval=4"
  (export VLM_PREFILL_DENSE_WEIGHTS=1 VLM_PREFILL_DENSE_MIN_ROWS=33
    serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-dense-prefill $si --mps")
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-mps-dequantize $si --mps"
}
stages16() {  # the decode-size w4a16 kernel with 16 ring stages a warp (VLM_W4A16_DECODE_RING=16) against 8: its
  # tests, bench/gemm at M = 1/4 and 2B decode at batch 1/16/64 (both depths are in every build)
  VLM_W4A16_DECODE_RING=16 python3 -m pytest -q -m gpu tests/kernels/test_w4a16_decode.py \
    tests/kernels/test_w4a16_rms_norm.py 2>&1 | tail -n 2
  for ring in 8 16; do
    echo "-- ring $ring"
    VLM_W4A16_DECODE_RING=$ring python3 bench/gemm.py --ms 1,4 --out-dir "$RES/gemm_ring$ring" | grep -E "^\| [27]B"
    VLM_W4A16_DECODE_RING=$ring python3 bench/decode.py --models 2b --weights w4a16 --kv int8 \
      --batches 1,16,64 --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_ring$ring.json" | tail -n 3
  done
}
dense_tests() {
  python3 -m pytest -q -m gpu tests/kernels/test_dense_decode.py
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -m gpu tests/kernels/test_dense_decode.py \
    -k "float16 and not bfloat16" | tail -n 3
}
dense_check() {
  dense_tests
  python3 bench/decode.py --models 2b --weights fp16 --kv int8 --batches 1 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_fp16.json" | tail -n 2
}
dense() {
  dense_tests
  python3 bench/gemm.py --ms 1,4 --out-dir "$RES/gemm_dense" | grep -E "^\| |^- M"
  for on in 1 0; do
    VLM_DENSE_DECODE=$on python3 bench/decode.py --models 2b --weights fp16 --kv int8 --batches 1,4 --peer-batches 0 \
      --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_fp16_dense$on.json" | tail -n 3
  done
  python3 bench/decode_trace.py --model 2b --weights fp16 --kv int8 --batch 1 --out "$RES/trace_fp16_b1.json" |
    head -n 12
}
quick() {  # a short before/after measure of a decode-path change
  python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64 --peer-batches 0 \
    --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_quick.json" | tail -n 3
  python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 --batch 1 --out "$RES/trace_w4a16_b1.json" |
    head -n 12
}
trace64() {
  python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 --batch 64 --out "$RES/trace_w4a16_b64.json" |
    head -n 16
}
ncu_run() {  # ncu_run NAME KERNEL_REGEX SCRIPT [ARGS...]: Nsight Compute on the kernels matching KERNEL_REGEX that
  # SCRIPT runs (throughput, occupancy, issue activity, warp stalls) into $RES/NAME.csv; prints the headline figures.
  # NCU_LAUNCHES="SKIP COUNT" profiles only COUNT matching launches after the first SKIP (an engine's steady steps).
  local launches=()
  [ -n "${NCU_LAUNCHES:-}" ] && launches=(--launch-skip "${NCU_LAUNCHES% *}" --launch-count "${NCU_LAUNCHES#* }")
  ncu --clock-control none --kernel-name "regex:$2" "${launches[@]}" --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section SchedulerStats \
    --section WarpStateStats --section InstructionStats \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" --csv --page details \
    python3 "$3" "${@:4}" >"$RES/$1.csv" 2>"$RES/$1.err"
  grep -E '"(Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|Issued Warp Per Scheduler|Eligible Warps Per Scheduler|Active Warps Per Scheduler|Achieved Occupancy|Theoretical Occupancy|Block Limit Registers|Registers Per Thread|Grid Size|Cluster Size|Executed Instructions|Stall Long Scoreboard|Warp Cycles Per Issued Instruction)"' \
    "$RES/$1.csv" | awk -F'","' '{print $1" | "$13" | "$NF}' | head -n 80
}
ncu_gemm_at() {  # ncu_gemm_at NAME M KERNEL_REGEX: one M-row call of each layer (2B qkv/gate_up/down, 7B gate_up),
  # caches flushed before each profiled kernel (ncu's default)
  cat >/tmp/ncu_gemm.py <<'PY'
import os
import numpy as np, torch
from vlmserve.awq_format import quantize_rtn
from vlmserve.kernels import pack_w4a16, w4a16_gemm
m = int(os.environ["NCU_GEMM_M"])
rng = np.random.default_rng(0)
for n, k in [(4096, 2048), (16384, 2048), (2048, 8192), (22016, 4096)]:
    q, z, s = quantize_rtn(rng.standard_normal((n, k), dtype=np.float32) * 0.02, 128)
    packed, sz = pack_w4a16(q, z, s, 128)
    w = torch.from_numpy(packed).cuda(); szt = torch.from_numpy(sz.view(np.int16)).cuda()
    a = torch.randn(m, k, dtype=torch.float16, device="cuda")
    for _ in range(2):
        w4a16_gemm(a, w, szt, n, 128)
    torch.cuda.synchronize()
PY
  NCU_GEMM_M=$2 ncu_run "$1" "$3" /tmp/ncu_gemm.py
}
ncu_gemm() { ncu_gemm_at ncu_gemm 1 w4a16_decode; }
base_build() {  # see the header: build-base/ from AB_PATCH reversed over a copy of the sources
  local patch=${AB_PATCH:-.gpu-carry/ab/base.patch} src=/tmp/ab-base
  [ -s "$patch" ] || { echo "no patch at $patch"; return 1; }
  rm -rf "$src" && mkdir -p "$src" && cp -r CMakeLists.txt native "$src"/ &&
    patch -d "$src" -R -p1 -s <"$patch" || return 1
  cmake -S "$src" -B build-base -DVLM_CUDA_ARCHITECTURES=90a -DVLM_BUILD_TESTS=OFF >/dev/null &&
    cmake --build build-base -j "$(nproc)" | grep -E "error|warning" || true
  test -f build-base/libvlmcore.so
}
ab_lib() {
  [ "$1" = base ] && echo "${AB_BASE_LIB:-$PWD/build-base/libvlmcore.so}" || echo "$PWD/build-gpu/libvlmcore.so"
}
ab_decode() {  # see the header
  local round tag m
  for round in 1 2; do
    for tag in base new; do
      for m in 2b 7b; do
        VLMSERVE_LIB=$(ab_lib $tag) python3 bench/decode.py --models $m --weights w4a16 --kv int8 \
          --batches "${AB_BATCHES:-1}" --peer-batches 0 --measure-bandwidth --work /tmp/decode-models \
          --out "$RES/ab_decode_${m}_${tag}_$round.json" 2>&1 | grep "tok/s" | sed "s/^/$tag round $round: /"
      done
    done
  done
}
option_ab() {  # evict_ab / policy_ab: a second library in $1 built with the CMake arguments after it, compared
  local dir=$1 d0 d1
  shift
  cmake -S . -B "$dir" -DVLM_CUDA_ARCHITECTURES=90a -DVLM_BUILD_TESTS=OFF "$@" >/dev/null &&
    cmake --build "$dir" -j "$(nproc)" | grep -E "error|warning"
  test -f "$dir/libvlmcore.so" || return 1
  d0=$(PYTHONPATH=tests/kernels:$PYTHONPATH python3 tests/kernels/digest_w4a16_outputs.py)
  d1=$(PYTHONPATH=tests/kernels:$PYTHONPATH VLMSERVE_LIB=$PWD/$dir/libvlmcore.so \
    python3 tests/kernels/digest_w4a16_outputs.py)
  [ -n "$d0" ] && [ "$d0" = "$d1" ] && echo "decode-size outputs: the same bits ($d0)" ||
    echo "decode-size outputs DIFFER: $d0 against $d1"
  # the second library in the comparisons' "base" place
  AB_BASE_LIB=$PWD/$dir/libvlmcore.so ab_decode
  AB_BASE_LIB=$PWD/$dir/libvlmcore.so ab_gemm
}
evict_ab() { option_ab build-plain -DVLM_W4A16_EVICT_FIRST=OFF; }  # see the header
policy_ab() { option_ab build-normal -DCMAKE_CUDA_FLAGS=-DVLM_W4A16_WEIGHT_POLICY_NORMAL=1; }  # see the header
lm_head_ab() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_dense_decode.py tests/engine/test_cuda_backend.py \
    -k "logits or lm_head or refused" 2>&1 | tail -n 4
  local round mode m
  for round in 1 2; do
    for mode in 0 1 2; do
      for m in 2b 7b; do
        VLM_LM_HEAD_DECODE=$mode python3 bench/decode.py --models $m --weights w4a16 --kv int8 --batches 1 \
          --peer-batches 0 --work /tmp/decode-models --out "$RES/lm_head_${m}_${mode}_$round.json" 2>&1 |
          grep "tok/s" | sed "s/^/VLM_LM_HEAD_DECODE=$mode round $round: /"
      done
    done
  done
}
head_argmax() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_dense_decode.py tests/engine/test_cuda_backend.py \
    -k "greedy_token_taken or refused_on_gpu or lm_head" 2>&1 | tail -n 4
  local round
  for round in 1 2; do
    echo "round $round: 2B and 7B with the argmax kernel, then 2B and 7B with the token taken in the lm head"
    decode_ab VLM_LM_HEAD_ARGMAX "argmax_r${round}_" 1 1
  done
}
attn_latency() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/engine/test_cuda_backend.py -k rope_inside 2>&1 | tail -n 3
}
ncu_attn_source() {  # see the header
  local run=(bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 --new-tokens 8 --peer-batches 0
    --work /tmp/decode-models --out /tmp/ncu_attn_decode.json)
  python3 "${run[@]}" | grep -E "tok/s"  # writes the model once, outside the profiler
  # launch 101 of the attention: the fifth decode step's sixth layer (24 layers a step, 7 decode steps in all;
  # a skip past them, 245 on 12-07, profiles nothing)
  ncu --clock-control none --kernel-name regex:decode_attention_mma_kernel --launch-skip 101 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section LaunchStats --import-source no \
    -o "$RES/ncu_attn_b1" python3 "${run[@]}" >"$RES/ncu_attn_b1.out" 2>&1
  ncu --import "$RES/ncu_attn_b1.ncu-rep" --page source --csv --print-source sass >"$RES/ncu_attn_b1_sass.csv" \
    2>/dev/null || ncu --import "$RES/ncu_attn_b1.ncu-rep" --page source --csv >"$RES/ncu_attn_b1_sass.csv"
  ncu --import "$RES/ncu_attn_b1.ncu-rep" --page details --csv >"$RES/ncu_attn_b1_details.csv" 2>/dev/null
  grep -E '"(Duration|Grid Size|Block Size|Registers Per Thread|Warp Cycles Per Issued Instruction)"' \
    "$RES/ncu_attn_b1_details.csv" | awk -F'","' '{print $(NF-2)" | "$NF}'
  python3 bench/ncu_source_top.py "$RES/ncu_attn_b1_sass.csv" --top 30 | tee "$RES/ncu_attn_b1_top.md"
  python3 bench/ncu_source_top.py "$RES/ncu_attn_b1_sass.csv" --listing >"$RES/ncu_attn_b1_listing.md"
  gzip -f "$RES/ncu_attn_b1_sass.csv"
  rm -f "$RES/ncu_attn_b1.ncu-rep"
}
head_norm() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/engine/test_cuda_backend.py -k "final_norm_in_the_lm_head or greedy_token_taken" \
    2>&1 | tail -n 3
  local round
  for round in $(seq 1 "${HEAD_NORM_ROUNDS:-2}"); do
    echo "round $round: 2B and 7B with the norm kernel, then 2B and 7B with the norm in the lm head"
    decode_ab VLM_LM_HEAD_NORM "head_norm_r${round}_" 1 1
  done
}
fp16_attention() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_decode_attention.py -k "float16-float16-128 or fp16_cache" \
    2>&1 | tail -n 3
  VLM_DECODE_ATTENTION_MMA_FP16=1 PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck \
    --error-exitcode 9 python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py \
    -k "test_matches_reference and float16-float16-128" 2>&1 | tail -n 3
  python3 -m pytest -q -rfE -m gpu tests/engine/test_cuda_backend.py -k "rope_inside and fp16" 2>&1 | tail -n 3
  local on w
  for on in 0 1; do
    for w in w4a16 fp16; do
      VLM_DECODE_ATTENTION_MMA_FP16=$on python3 bench/decode.py --models 2b --weights "$w" --kv fp16 --batches 1,16,64 \
        --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_${w}_fp16kv_mma$on.json" 2>&1 | grep "tok/s"
    done
    VLM_DECODE_ATTENTION_MMA_FP16=$on python3 bench/decode.py --models 7b --weights w4a16 --kv fp16 --batches 1 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_7b_fp16kv_mma$on.json" 2>&1 | grep "tok/s"
  done
}
etests_fp16() {  # see the header
  VLM_DECODE_ATTENTION_MMA_FP16=1 etests
}
push_quick() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_w4a16_decode.py -k "changes_no_bits and 1-8" 2>&1 | tail -n 3
  local on
  for on in 0 1; do
    VLM_W4A16_DECODE_PUSH=$on python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_2b_push$on.json" 2>&1 | grep "tok/s" |
      sed "s/^/push=$on /"
  done
  for on in 0 1; do
    VLM_W4A16_DECODE_PUSH=$on python3 bench/gemm.py --ms 1 --layers 2B.qkv,2B.o,2B.down --out-dir "$RES/gemm_push$on" |
      grep -E "^\| 2B" | sed "s/^/push=$on /"
  done
}
ncu_source() {  # see the header
  local run=(bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 --new-tokens 8 --peer-batches 0
    --work /tmp/decode-models --out /tmp/ncu_source_decode.json) on
  python3 "${run[@]}" | grep -E "tok/s"  # writes the model once, outside the profiler
  for on in 0 1; do
    # launches 200-203 of the decode kernel are one steady layer's q/k/v, o, gate_up and down (ncu_tail)
    VLM_W4A16_DECODE_PUSH=$on ncu --clock-control none --kernel-name regex:w4a16_decode_kernel --launch-skip 201 \
      --launch-count 1 --section SourceCounters --section WarpStateStats --section LaunchStats --import-source no \
      -o "$RES/ncu_o_push$on" python3 "${run[@]}" >"$RES/ncu_o_push$on.out" 2>&1
    # --print-source picks SASS where this ncu has the option; without it the source page is SASS where no source
    # was imported
    ncu --import "$RES/ncu_o_push$on.ncu-rep" --page source --csv --print-source sass >"$RES/ncu_o_push${on}_sass.csv" \
      2>"$RES/ncu_o_push${on}_sass.err" ||
      ncu --import "$RES/ncu_o_push$on.ncu-rep" --page source --csv >"$RES/ncu_o_push${on}_sass.csv" \
        2>>"$RES/ncu_o_push${on}_sass.err" || head -c 1500 "$RES/ncu_o_push${on}_sass.err"
    ncu --import "$RES/ncu_o_push$on.ncu-rep" --page details --csv >"$RES/ncu_o_push${on}_details.csv" 2>/dev/null
    echo "== VLM_W4A16_DECODE_PUSH=$on"
    grep -E '"(Duration|Grid Size|Cluster Size|Warp Cycles Per Issued Instruction)"' "$RES/ncu_o_push${on}_details.csv" |
      awk -F'","' '{print $(NF-2)" | "$NF}'
    python3 bench/ncu_source_top.py "$RES/ncu_o_push${on}_sass.csv" --top 30 | tee "$RES/ncu_o_push${on}_top.md"
    python3 bench/ncu_source_top.py "$RES/ncu_o_push${on}_sass.csv" --listing >"$RES/ncu_o_push${on}_listing.md"
    gzip -f "$RES/ncu_o_push${on}_sass.csv"  # ~2 MB each; the 4.6 MB report is not brought back
    rm -f "$RES/ncu_o_push$on.ncu-rep"
  done
}
push_sum() {  # see the header
  python3 -m pytest -v -rfE -m gpu tests/kernels/test_w4a16_decode.py -k "pulled or pushed" |
    grep -E "PASSED|FAILED|ERROR|passed|failed|^E "
  VLM_W4A16_DECODE_PUSH=1 python3 -m pytest -q -rfE -m "gpu and not slow" tests/engine/test_cuda_backend.py 2>&1 |
    tail -n 4
  decode_ab VLM_W4A16_DECODE_PUSH push_a 1,4 1
  decode_ab VLM_W4A16_DECODE_PUSH push_b 1,4 1
  local on
  for on in 0 1; do
    echo "== VLM_W4A16_DECODE_PUSH=$on"
    VLM_W4A16_DECODE_PUSH=$on python3 bench/gemm.py --ms 1 --out-dir "$RES/gemm_push$on" | grep -E "^\| "
  done
}
ab_gemm() {  # see the header
  local tag
  for tag in base new; do
    echo "== $tag"
    VLMSERVE_LIB=$(ab_lib $tag) python3 bench/gemm.py --ms "${AB_GEMM_MS:-1}" --out-dir "$RES/ab_gemm_$tag" |
      grep -E "^\| |^- M"
  done
}
step_probe() {  # the step-streaming probe: its tests, then a batch-1 step's bytes (2B, 7B) read by a chain of dependent
  # kernels, one persistent launch with a counter wait between phases, and that launch without the waits
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_step_stream_probe.py 2>&1 | grep -E "^FAILED|^ERROR|passed|failed"
  python3 bench/step_stream_probe.py --out "$RES/step_stream_probe.json" 2>&1 | grep -vE "^\[(2b|7b)\]"
}
long_k_engine() {  # 7B w4a16 + int8 KV decode at 136/160/192 rows with the token-tile rule (long-K layers take 128-token
  # tiles from 129 to 255 rows) and with every token tile pinned to 64, which at 136 and 160 rows is the rule before
  # that clause on every 7B layer
  local n
  for n in 0 64; do
    VLM_W4A16_CUTLASS_TILE_N=$n python3 bench/decode.py --models 7b --weights w4a16 --kv int8 --batches 136,160,192 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_7b_tile_n$n.json" 2>&1 | grep -E "tok/s|FAILED|rror"
  done
}
ncu_tail() {  # what holds the persistent layer tail's GEMM phases (VLM_LAYER_TAIL=1, its own cut) at one row, against
  # the chain's four GEMMs of the same layers: Nsight Compute on two tail launches and on one layer's four decode
  # GEMMs of a steady 2B batch-1 decode (caches flushed before each, as ncu does), then both graph-replayed steps'
  # kernel times (bench/decode_trace.py)
  local run=(bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 --new-tokens 8 --peer-batches 0
    --work /tmp/decode-models --out /tmp/ncu_tail_decode.json)
  python3 "${run[@]}" | grep -E "tok/s"  # writes the model once, outside the profiler
  VLM_LAYER_TAIL=1 VLM_LAYER_TAIL_WIDE=1 NCU_LAUNCHES="60 2" ncu_run ncu_tail layer_tail_kernel "${run[@]}"
  NCU_LAUNCHES="200 4" ncu_run ncu_tail_chain w4a16_decode_kernel "${run[@]}"
  for t in 0 1; do
    VLM_LAYER_TAIL=$t VLM_LAYER_TAIL_WIDE=$t python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 \
      --batch 1 --work /tmp/decode-models --out "$RES/trace_tail${t}_b1.json" | head -n 12
  done
}
ncu_gemm64() { ncu_gemm_at ncu_gemm64 64 "w4a16_kernel|splitk_reduce"; }
ncu_attn() {  # one call at each batch, caches flushed before each profiled kernel (ncu's default)
  cat >/tmp/ncu_attn.py <<'PY'
import torch
from vlmserve.kernels import decode_attention
torch.manual_seed(0)
heads, kv_heads, hd, block, ctx = 16, 8, 128, 64, 512
for rows in (64, 1):
    nb = rows * ctx // block
    kc = torch.randint(0, 256, (nb, kv_heads, block, hd), dtype=torch.uint8, device="cuda")
    vc = torch.randint_like(kc, 0, 256)
    sz = torch.stack([torch.rand(nb, kv_heads, block) * 0.1, torch.rand(nb, kv_heads, block) - 0.5], -1)
    sz = sz.half().view(torch.int16).cuda()
    q = torch.randn(rows, heads * hd, dtype=torch.float16, device="cuda")
    pos = torch.full((rows,), ctx - 1, dtype=torch.int32, device="cuda")
    tables = torch.randperm(nb, device="cuda").int().view(rows, ctx // block)
    for _ in range(2):
        decode_attention(q, kc, vc, pos, tables, kv_dtype="int8", kv_heads=kv_heads, head_dim=hd, block_size=block,
                         k_scale_zero=sz, v_scale_zero=sz.clone())
    torch.cuda.synchronize()
PY
  ncu_run ncu_attn decode_attention /tmp/ncu_attn.py
}
attn_ab() {  # the decode attention's two forms, and the tensor-core one's split plan
  VLM_DECODE_ATTENTION_MMA=0 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64 \
    --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_attn_cuda_cores.json" | tail -n 3
  for b in 4 2; do
    VLM_ATTENTION_SPLIT_BLOCKS_PER_SM=$b python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,64 \
      --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_attn_split$b.json" | tail -n 3
  done
}
attn_b1() {
  for k in 64 256; do
    VLM_ATTENTION_MIN_KEYS_PER_SPLIT=$k python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1 \
      --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_minkeys$k.json" | tail -n 2
  done
}
rope() {  # RoPE and the K/V write inside the decode attention: compute-sanitizer on one shape of its bit-identity
  # test (etests runs them all), then 2B w4a16 + int8 KV decode at batch 1/16/64 without (VLM_ROPE_IN_ATTENTION=0)
  # and with it
  compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 python3 -m pytest -q -m gpu \
    tests/engine/test_cuda_backend.py -k "rope_inside and group4" | tail -n 3
  for f in 0 1; do
    VLM_ROPE_IN_ATTENTION=$f python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches 1,16,64 \
      --peer-batches 0 --measure-bandwidth --work /tmp/decode-models --out "$RES/decode_2b_rope$f.json" | tail -n 3
  done
}
pyenv() {  # which optional image packages the device image has
  python3 -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ['torchvision', 'cv2', 'simplejpeg', 'turbojpeg', 'PIL']})"
  python3 -c "import PIL; print('pillow', PIL.__version__)"
}
threads() {  # where the service processes' time goes at concurrency 64 and 256 (w4a16 + int8 KV): the busiest
  # threads of each over each level, and a py-spy dump of each 2.5 s into it (py-spy from a carried wheel, if any)
  serve_site || return 1
  pyspy_path
  python3 bench/serve.py --model-name internvl-2b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 64,256 --py-spy-after 2.5 \
    --out-dir "$RES/serve" --stem internvl-2b-$GPU_TAG-threads 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 20
  head -n 40 "$RES"/serve/logs/*_c256_lm.pyspy.txt
}
vision() {  # the vision encoder: its GPU tests (vtests), then bench/vision.py eager, graphed and compiled at batch
  # 1/4/8/16 (no busy threads)
  vtests
  python3 bench/vision.py --model-name internvl-2b --work /tmp/serve-work --batches 1,4,8,16 --busy-threads 0 \
    --prepare-threads 8 --reps 20 --out-dir "$RES/vision" 2>&1 | grep -v "^\[serve\]"
}
serve_runs() {  # serve_runs LEVELS ARGS...: bench/serve.py on model (a), w4a16 + int8 KV, vision batch 16, no peer, at
  # the concurrency levels LEVELS, once per ARGS (a --stem and flags), in order; fails if any run failed
  local levels=$1 status=0
  shift
  serve_site || return 1
  for v in "$@"; do
    python3 bench/serve.py --model-name internvl-2b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
      --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency "$levels" --out-dir "$RES/serve" $v 2>&1 |
      grep -E "c=[0-9]+:|ABORT|Error|busiest|calls by LM process" | tail -n 12
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
  return $status
}
prep_check() {  # the image processor on the GPU: its tests and the vision tests beside them (whole output kept)
  serve_site || return 1
  python3 -m pytest -q -m gpu -rf --tb=short tests/services/test_preprocess_device.py \
    tests/services/test_vision_graphs.py tests/services/test_preprocess_pool.py tests/services/test_vision_service.py \
    tests/services/test_vision_replicas.py >"$RES/prep_check_pytest.txt" 2>&1
  grep -E "^E  |^FAILED|passed|failed" "$RES/prep_check_pytest.txt" | head -n 40
}
prep_bench() {  # bench/preprocess.py: one 512x512 JPEG's preparation on the host and on the GPU (after prep_serve,
  # whose model it reuses)
  python3 bench/preprocess.py --model-name internvl-2b --work /tmp/serve-work --threads 1,8 --per-thread 8 \
    --reps 20 --out-dir "$RES/preprocess" 2>&1 | grep -v "^\[serve\]"
}
prep_serve() {  # serving at 64/256 (--stream-interval 4) with the image processor on the GPU (asked for: the
  # 2B processor's values there differ from the host's, so auto stays on the host), then on the host (the default)
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-prep-gpu --lm-flag=--stream-interval=4 --vision-flag=--preprocess-device=cuda" \
    "--stem internvl-2b-$GPU_TAG-prep-host --lm-flag=--stream-interval=4"
}
pyspy_path() {  # py-spy from a carried wheel onto PATH, if one is carried
  if ls .gpu-carry/wheels/py_spy-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .gpu-carry/wheels/py_spy-*.whl &&
      export PATH=/tmp/pyspy/bin:$PATH
  fi
}
leads_serve() {  # serving at 64/256 (--stream-interval 4): the defaults (tiles from the preprocessing workers
  # through shared memory, a 0.5 ms GIL switch interval; a 6 s py-spy record of each service 3 s into each level),
  # the same with Python's 5 ms switch interval, with 4 gRPC acceptors in each service, with the image processor on
  # the GPU (forced)
  pyspy_path
  local si="--lm-flag=--stream-interval=4"
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-base $si --py-spy-after 3 --py-spy-record 6" \
    "--stem internvl-2b-$GPU_TAG-switch5 $si --lm-flag=--gil-switch-interval-ms=5 --vision-flag=--gil-switch-interval-ms=5" \
    "--stem internvl-2b-$GPU_TAG-acc4 $si --lm-flag=--grpc-acceptors=4 --vision-flag=--grpc-acceptors=4" \
    "--stem internvl-2b-$GPU_TAG-prepgpu $si --vision-flag=--preprocess-device=cuda"
  for f in "$RES"/serve/logs/*${GPU_TAG}-base*_c256_*.pyspy.folded; do  # where each service's event loop spends it at 256
    [ -f "$f" ] && python3 bench/pyspy_summary.py "$f" --top 12 --thread MainThread
  done | head -n 90
}
serve_compile() {  # the vision forward as graphs, then compiled
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-graphs" "--stem internvl-2b-$GPU_TAG-compiled --vision-flag=--vision-compile"
}
serve_preprocess() {  # image preprocessing in threads of the vision service, then in worker processes
  serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-prep-threads --vision-flag=--no-preprocess-processes" \
    "--stem internvl-2b-$GPU_TAG-prep-processes --vision-flag=--preprocess-processes"
}
serve_prep_default() { serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-prep-default"; }
serve_interval() {  # one token a message, then --stream-interval 4
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-interval1" "--stem internvl-2b-$GPU_TAG-interval4 --lm-flag=--stream-interval=4"
}
serve_interval4() { serve_runs 1,64,256 "--stem internvl-2b-$GPU_TAG-interval4-levels --lm-flag=--stream-interval=4"; }
vtests() {  # the vision encoder's GPU tests (graphs and compiled forwards against eager)
  python3 -m pytest -q -m gpu tests/services/test_vision_graphs.py tests/services/test_vision_replicas.py 2>&1 | tail -n 5
}
serve_c1() {
  serve_site || return 1
  python3 bench/serve.py --model-name internvl-2b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1 --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG-c1 2>&1 | grep -E "c=[0-9]+:|ABORT|Error" | tail -n 8
}
serve_variants() {
  serve_site || return 1
  python3 bench/serve.py --model-name internvl-2b --variants w4a16,w4a16-kv4 --vision-batch 16,1 --output-tokens 128 \
    --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG-variants 2>&1 | grep -E "^\[serve\] .*(c=|failed)|rror" | tail -n 40
}
serve_compare() {  # fp16 vs w4a16 + int8 KV at concurrency 1/16, transformers at batch 16, same run
  serve_site || return 1
  python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --peer-batches 16 --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG-compare 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 40
}
serve_dequant_chunks() {  # prefill-sized w4a16 GEMMs dequantized in 16 MiB stretches that stay in the L2
  # (VLM_DEQUANT_CHUNK_MB=16, inherited by the services): fp16 vs w4a16 + int8 KV at 1/16, then w4a16 + int8 KV
  # at 64/256 without and with it (--stream-interval 4)
  serve_site || return 1
  VLM_DEQUANT_CHUNK_MB=16 python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 --vision-batch 16 \
    --output-tokens 128 --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 --out-dir "$RES/serve" \
    --stem internvl-2b-$GPU_TAG-dequant16-compare 2>&1 | grep -E "c=[0-9]+:|rror|ABORT"
  local si="--lm-flag=--stream-interval=4"
  serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-dequant-whole $si"
  (export VLM_DEQUANT_CHUNK_MB=16; serve_runs 64,256 "--stem internvl-2b-$GPU_TAG-dequant16 $si")
}
serve_chunk() {  # fp16 vs w4a16 + int8 KV at 1/16 with prefill chunks of at most 128 tokens a step (a step carrying an
  # image's prefill then stays within the w4a16 kernels' row range instead of dequantizing every layer for cuBLAS),
  # then the same with the default 2,048, one call
  serve_site || return 1
  for t in 128 2048; do
    python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 --vision-batch 16 --output-tokens 128 \
      --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 --out-dir "$RES/serve" \
      --stem internvl-2b-$GPU_TAG-chunk$t --lm-flag=--max-num-batched-tokens=$t 2>&1 | grep -E "c=[0-9]+:|rror|ABORT"
  done
}
serve_llava() {  # model (b): w4a16 + int8 KV at concurrency 1/16/64, no peer
  serve_site || return 1
  python3 bench/serve.py --model-name llava-7b --variants w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --no-peer --calib-samples 16 --work /tmp/serve-work --concurrency 1,16,64 --out-dir "$RES/serve" \
    --stem llava-7b-$GPU_TAG 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 40
}
serve_llava_compare() {  # model (b): fp16 vs w4a16 + int8 KV at concurrency 1/16, transformers at batch 16
  serve_site || return 1
  python3 bench/serve.py --model-name llava-7b --variants fp16,w4a16-kv8 --vision-batch 16 --output-tokens 128 \
    --peer-batches 16 --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 --out-dir "$RES/serve" \
    --stem llava-7b-$GPU_TAG-compare 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 40
}
serve_sampled() {  # serving with sampled requests, drawn on the host and then on the GPU
  local sampled="--temperature 0.7 --top-p 0.9 --lm-flag=--stream-interval=4"
  serve_runs 16,64,256 "--stem internvl-2b-$GPU_TAG-sampled-host $sampled"
  VLM_DEVICE_SAMPLING=1 serve_runs 16,64,256 "--stem internvl-2b-$GPU_TAG-sampled-device $sampled"
}
device_sampling() {  # sampled rows drawn on the GPU: tests, compute-sanitizer, then bench/sampling.py off and on
  python3 -m pytest -q -m gpu tests/kernels/test_draw_rows.py tests/engine/test_device_sampling.py 2>&1 | tail -n 6
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -m gpu tests/kernels/test_draw_rows.py \
    -k "rows_without or ties" 2>&1 | tail -n 3
  for d in 0 1; do
    VLM_DEVICE_SAMPLING=$d python3 bench/sampling.py --device cuda --out "$RES/sampling_cuda_device$d.json" 2>&1 |
      grep -v "^Loading"
  done
}
sampling() {  # what drawing sampled requests' tokens on the host costs the CUDA engine
  python3 bench/sampling.py --device cuda --out "$RES/sampling_cuda.json" 2>&1 | grep -v "^Loading"
}
trace7b() {  # where the 7B shape's batch-1 step goes (w4a16 + int8 KV), then its tok/s in the same call
  python3 bench/decode_trace.py --model 7b --weights w4a16 --kv int8 --batch 1 --out "$RES/trace_7b_w4a16_b1.json" |
    head -n 20
  decode_7b
}
serve_compare_codes() {  # serve_compare with the codes form up to 16 rows (the services inherit the setting)
  serve_site || return 1
  VLM_W4A16_GEMM_CODES=1 python3 bench/serve.py --model-name internvl-2b --variants fp16,w4a16-kv8 --vision-batch 16 \
    --output-tokens 128 --peer-batches 16 --calib-samples 16 --work /tmp/serve-work --concurrency 1,16 \
    --out-dir "$RES/serve" --stem internvl-2b-$GPU_TAG-compare-codes 2>&1 | grep -v "^\[serve\] *[0-9]*%" | tail -n 40
}
trace_b1() {  # per-kernel time of graph-replayed batch-1 steps, 2B and 7B w4a16 + int8 KV
  local m
  for m in 2b 7b; do
    python3 bench/decode_trace.py --model $m --weights w4a16 --kv int8 --batch 1 --out "$RES/trace_${m}_w4a16_b1.json" |
      grep -v -i "warn"
  done
}
trace() {  # per-kernel time of graph-replayed decode steps
  for b in 1 64; do
    python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 --batch $b --out "$RES/trace_w4a16_b$b.json" |
      head -n 16
  done
  python3 bench/decode_trace.py --model 2b --weights fp16 --kv int8 --batch 1 --out "$RES/trace_fp16_b1.json" | head -n 16
  # fewer key slices per attention call at batch 1 (the default plan aims at 8 blocks per SM)
  VLM_ATTENTION_SPLIT_BLOCKS_PER_SM=1 python3 bench/decode_trace.py --model 2b --weights w4a16 --kv int8 --batch 1 \
    --out "$RES/trace_w4a16_b1_split1.json" | head -n 6
}
profile() {  # per-phase GPU and host time of prefill and decode steps (eager launches, CUDA events)
  for b in 1 64; do
    VLM_CUDA_PROFILE=1 python3 bench/decode.py --models 2b --weights w4a16 --kv int8 --batches $b --new-tokens 32 \
      --peer-batches 0 --work /tmp/decode-models --out "$RES/profile_b$b.json" 2>&1 | grep -E "vlm profile" | head -n 80
  done
}
sanitize() {
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -m gpu tests/kernels/test_w4a16_gemm.py \
    -k "matches_reference and float16 and (1-4096 or 16-5504 or 13-1024 or 1-64-)"
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -m gpu tests/kernels/test_w4a16_rms_norm.py \
    tests/kernels/test_decode_attention.py tests/kernels/test_prefill_attention.py tests/kernels/test_rms_norm.py \
    -k "float16 or refused or bad_"
}
gvtests() {  # the column-tile w4a16 kernel (w4a16_gemv.cu) with each number of warps a tile, and the wrappers' refusals
  python3 -m pytest -v -rfE tests/kernels/test_w4a16_gemv.py tests/kernels/test_wrappers_refuse_host_tensors.py |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
}
gemv_gemm() {  # bench/gemm at 1, 2 and 4 rows on every layer: the engine's path beside the column-tile kernel
  python3 bench/gemm.py --ms 1,2,4 --read-floor --out-dir "$RES/gemm_gemv" | grep -E "^\| |^- M|^  -"
}
gemv_etests() {  # the engine with the column-tile kernel (VLM_W4A16_GEMV) against the CPU backend, its copies' stat
  python3 -m pytest -v -rfE -m gpu tests/engine/test_cuda_backend.py -k column_tile |
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E "
}
gemv_decode() {  # 2B and 7B w4a16 + int8 KV decode at batch 1 with the strip kernel (VLM_W4A16_GEMV=0), then the
  # column-tile kernel (=1), GEMV_ROUNDS rounds (default 1)
  local round
  for round in $(seq 1 "${GEMV_ROUNDS:-1}"); do decode_ab VLM_W4A16_GEMV "gemv_r${round}_" 1 1; done
}
traces_b1() {  # traces_b1 SETTING...: per-kernel and per-layer-position time of graph-replayed batch-1 steps (2B,
  # 7B w4a16 + int8 KV; TRACE_MODELS picks) under each setting (space-separated VAR=value), one-launch kernels left
  # out of the listing
  local m setting i
  for m in ${TRACE_MODELS:-2b 7b}; do
    i=0
    for setting in "$@"; do
      i=$((i + 1))
      echo "$i: $setting"
      env $setting python3 bench/decode_trace.py --model $m --weights w4a16 --kv int8 --batch 1 \
        --out "$RES/trace_${m}_setting$i.json" | grep -v -i "warn" | grep -v "^ *[0-9.]* *[0-9.]* *1.0 x"
    done
  done
}
gemv_trace() {  # batch-1 steps' kernels with the strip kernel, then column tiles
  traces_b1 "VLM_W4A16_GEMV=0" "VLM_W4A16_GEMV=1"
}
gemv_waves() {  # the column-tile kernel's check (plain, residual, silu(gate)*up, fused norm), then batch-1 steps'
  # kernels: strip kernel; column tiles; with the 4-chunk ring and grids of 2 blocks an SM; with grids of 1 block an
  # SM (registers left for the next kernel's blocks under dependent launch)
  PYTHONPATH="tests/kernels:$PYTHONPATH" python3 tests/kernels/check_w4a16_gemv.py | tail -n 3
  traces_b1 "VLM_W4A16_GEMV=0" "VLM_W4A16_GEMV=1" "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_RING=4 VLM_W4A16_GEMV_WAVE=2" \
    "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_WAVE=1"
}
gemv_decode_2b() {  # 2B w4a16 + int8 KV decode at batch 1, strip kernel (VLM_W4A16_GEMV=0) then column tiles,
  # GEMV_ROUNDS rounds (default 1)
  local round
  for round in $(seq 1 "${GEMV_ROUNDS:-1}"); do decode_ab VLM_W4A16_GEMV "gemv_r${round}_" 1 -; done
}
gemv_shared() {  # the column-tile kernel's ring in registers (VLM_W4A16_GEMV_SHARED_RING=0) and in shared memory
  # (8 or 16 chunks): bench/gemm at one row, then batch-1 steps' kernels (TRACE_MODELS): strip kernel; column tiles on
  # q/k/v, o, gate_up with the register ring and the 8-chunk shared one; on each layer that pays alone, down too
  # (VLM_W4A16_GEMV_EACH=1), 8-chunk shared ring; on every layer (EACH=2), 16-chunk shared ring
  local ring
  for ring in 0 8 16; do
    echo "VLM_W4A16_GEMV_SHARED_RING=$ring"
    VLM_W4A16_GEMV_SHARED_RING=$ring python3 bench/gemm.py --ms 1 --out-dir "$RES/gemv_shared$ring" |
      grep -E "^\| " | awk -F'|' 'NR > 1 {print $2, $3, "strip", $8, "column tiles", $19}'
  done
  traces_b1 "VLM_W4A16_GEMV=0" "VLM_W4A16_GEMV=1" "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_SHARED_RING=8" \
    "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_SHARED_RING=8 VLM_W4A16_GEMV_EACH=1" \
    "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_SHARED_RING=16 VLM_W4A16_GEMV_EACH=2"
}
decode_settings() {  # decode_settings STEM SETTING...: w4a16 + int8 KV tok/s (TRACE_MODELS, default 2B and 7B) at
  # DECODE_BATCHES (default 1) under each setting (space-separated VAR=value), GEMV_ROUNDS rounds (default 1),
  # settings interleaved in a round
  local stem=$1 round setting m i
  shift
  for round in $(seq 1 "${GEMV_ROUNDS:-1}"); do
    i=0
    for setting in "$@"; do
      i=$((i + 1))
      for m in ${TRACE_MODELS:-2b 7b}; do
        echo "round $round, $m, $i: $setting"
        env $setting python3 bench/decode.py --models $m --weights w4a16 --kv int8 --batches "${DECODE_BATCHES:-1}" \
          --peer-batches 0 --work /tmp/decode-models --out "$RES/decode_${m}_${stem}_r${round}_s$i.json" 2>&1 |
          grep -E "tok/s"
      done
    done
  done
}
gemv_shared_decode() {  # batch-1 tok/s: strip kernel; column tiles with the 8-chunk shared ring on each layer that
  # pays (EACH=1); with the 16-chunk shared ring on every layer (EACH=2)
  decode_settings shared "VLM_W4A16_GEMV=0" "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_SHARED_RING=8 VLM_W4A16_GEMV_EACH=1" \
    "VLM_W4A16_GEMV=1 VLM_W4A16_GEMV_SHARED_RING=16 VLM_W4A16_GEMV_EACH=2"
}
gemv_7b_o() {  # 7B w4a16 + int8 KV batch 1 (GEMV_ROUNDS rounds): the default (no 7B layer takes column tiles);
  # o alone on column tiles with the register ring; o alone with the shared ring, which leaves gate_up its early
  # start (VLM_W4A16_GEMV_ALONE=1); o and down on the shared ring; then the steps' kernels of the default and of o
  # alone on the shared ring
  TRACE_MODELS=7b decode_settings o7b "VLM_W4A16_GEMV=1" "VLM_W4A16_GEMV_EACH=1 VLM_W4A16_GEMV_LAYERS=2" \
    "VLM_W4A16_GEMV_ALONE=1" "VLM_W4A16_GEMV_EACH=1 VLM_W4A16_GEMV_SHARED_RING=8"
  TRACE_MODELS=7b traces_b1 "VLM_W4A16_GEMV=1" "VLM_W4A16_GEMV_ALONE=1"
}
attn_cuts_tests() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/kernels/test_decode_attention.py 2>&1 | tail -n 3
  VLM_ATTENTION_RELEASE_MERGE=1 VLM_ATTENTION_Q_FIRST=1 VLM_ATTENTION_ONE_WAVE=1 \
    PYTHONPATH=$PWD/tests/kernels:$PYTHONPATH compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py -k test_matches_reference 2>&1 | tail -n 3
}
attn_cuts_etests() {  # see the header
  python3 -m pytest -q -rfE -m gpu tests/engine/test_cuda_backend.py -k "rope_inside or attention_latency_cuts" 2>&1 |
    tail -n 3
}
attn_cuts() {  # see the header
  local all="VLM_ATTENTION_RELEASE_MERGE=1 VLM_ATTENTION_Q_FIRST=1 VLM_ATTENTION_ONE_WAVE=1"
  decode_settings cuts "VLM_ATTENTION_RELEASE_MERGE=0" "VLM_ATTENTION_RELEASE_MERGE=1" \
    "VLM_ATTENTION_RELEASE_MERGE=1 VLM_ATTENTION_Q_FIRST=1" "$all" "$all VLM_ATTENTION_SPLIT_BLOCKS_PER_SM=1" \
    "$all VLM_ATTENTION_MIN_KEYS_PER_SPLIT=128"
  traces_b1 "VLM_ATTENTION_RELEASE_MERGE=0" "$all"
}
gemv_rows() {  # 2B w4a16 + int8 KV at batch 2 and 4 (GEMV_ROWS_BATCHES): column tiles at one row only against up
  # to 4 rows
  TRACE_MODELS=2b DECODE_BATCHES=${GEMV_ROWS_BATCHES:-2,4} decode_settings rows "VLM_W4A16_GEMV=1" "VLM_W4A16_GEMV=4"
}
gemv_shared_memcheck() {  # compute-sanitizer memcheck on the shared rings' checks (8 chunks: 8 and 1 warps a tile;
  # 16: 1)
  VLM_W4A16_GEMV_SHARED_RING=8 VLM_W4A16_GEMV_CHECK_PARTS=8,1 PYTHONPATH="tests/kernels:$PYTHONPATH" \
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/kernels/check_w4a16_gemv.py | tail -n 3
  VLM_W4A16_GEMV_SHARED_RING=16 VLM_W4A16_GEMV_CHECK_PARTS=1 PYTHONPATH="tests/kernels:$PYTHONPATH" \
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/kernels/check_w4a16_gemv.py | tail -n 3
}
gemv_parts() {  # bench/gemm at one row with the column-tile kernel's warps a tile pinned to 8, 4, 2 and 1
  local parts
  for parts in 8 4 2 1; do
    echo "VLM_W4A16_GEMV_PARTS=$parts"
    VLM_W4A16_GEMV_PARTS=$parts python3 bench/gemm.py --ms 1 --out-dir "$RES/gemv_parts$parts" |
      grep -E "^\| " | awk -F'|' 'NR > 1 {print $2, $3, $19}'
  done
}
gemv_rings() {  # bench/gemm at one row: the column-tile kernel with 8 chunks in flight a lane, then 4 (3 blocks an SM)
  local ring
  for ring in 8 4; do
    echo "VLM_W4A16_GEMV_RING=$ring"
    VLM_W4A16_GEMV_RING=$ring python3 bench/gemm.py --ms 1 --out-dir "$RES/gemv_ring$ring" |
      grep -E "^\| " | awk -F'|' 'NR > 1 {print $2, $3, "strip", $8, "column tiles", $19}'
  done
}
gemv_memcheck() {  # compute-sanitizer memcheck on the column-tile kernel's checks, 8 and 2 warps a tile
  VLM_W4A16_GEMV_CHECK_PARTS=8,2 PYTHONPATH="tests/kernels:$PYTHONPATH" compute-sanitizer --tool memcheck \
    --error-exitcode 1 python3 tests/kernels/check_w4a16_gemv.py | tail -n 3
}
ktests() {  # the attention, norm and argmax kernels against their references
  python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py tests/kernels/test_prefill_attention.py \
    tests/kernels/test_rms_norm.py tests/kernels/test_argmax_rows.py
}
export RES HIGH_CONCURRENCY
export -f attn_cuts_tests attn_cuts_etests attn_cuts gemv_rows gemv_7b_o gemv_shared decode_settings gemv_shared_decode gemv_shared_memcheck traces_b1 gemv_decode_2b gemv_waves gemv_trace gvtests gemv_gemm gemv_memcheck gemv_etests gemv_decode gemv_parts gemv_rings fp16_attention etests_fp16 head_norm attn_latency ncu_attn_source head_argmax lm_head_ab option_ab evict_ab policy_ab wgtests push_quick ncu_source push_sum trace_b1 gtests base_build ab_lib ab_decode ab_gemm step_probe cutlass_file long_k_engine ncu_tail gemm_apart prefill_rows prefill_settings etests_cutlass cutlass_schedules ncu_cutlass cutlass_engine cutlass_tests cutlass_gemm cutlass_memcheck cutlass_prefill layer_tail layer_tail_memcheck layer_tail_bench layer_tail_wide serve_event_loops serve_prefill_hold serve_fronts serve_fronts_vision2 serve_fronts_hold serve_fronts_low serve_final serve_final_fronts serve_targets_high serve_targets_low serve_connections serve_c1_layouts serve_tail_compare serve_mps_prep16 dense_prefill serve_dense_compare serve_dense_prefill layer_plans decode_plan_sweep overlap serve_dequant_chunks decode_ab early_loads int4_attention mps_path serve_mps serve_mps_acc serve_layouts decode_matrix decode_matrix_2b decode_matrix_7b_fp16 decode_matrix_7b_w4a16 serve_overlap1 serve_chunk serve_overlap dequant_chunks serve_sampled device_sampling sampling gemm_codes codes_engine serve_compare_codes trace7b serve_llava serve_llava_compare pyspy_path leads_serve prep_check prep_serve prep_bench cluster_auto env_setting wgmma_setting wgmma_cluster dequant_129 strip_default serve_runs serve_interval serve_interval4 wgmma wgmma_engine wgmma_ncu serve_prep_default vtests serve_preprocess vision serve_compile threads rope pyenv dequant gemm_full serve_variants stages16 dense_tests dense_check dense quick trace64 ncu_run ncu_gemm_at ncu_gemm ncu_gemm64 trace prefill build tests wtests etests sanitize gemm gemm_new decode profile decode_new decode_7b dtests decode_table serve ktests serve_site serve_leads ncu_attn serve_compare attn_ab attn_b1 serve_c1

step build 360  # the CUTLASS kernels take ~1.5-2.5 min of it where CUTLASS is carried (180 s was cut short once)
step attn_cuts_tests 360
step attn_cuts_etests 300
step attn_cuts 480
step gvtests 240
step gemv_gemm 240
step gemv_etests 240
step gemv_shared 480
step gemv_shared_decode 420
step gemv_shared_memcheck 300
step gemv_rows 300
step gemv_7b_o 480
step gemv_decode 400
step gemv_decode_2b 240
step gemv_memcheck 300
step gemv_parts 300
step gemv_rings 200
step gemv_trace 320
step gemv_waves 360
step cutlass_tests 300
step cutlass_file 200
step cutlass_gemm 420
step cutlass_prefill 300
step cutlass_engine 480
step etests_cutlass 400
step cutlass_memcheck 300
step cutlass_schedules 480
step ncu_cutlass 240
step layer_tail 400
step layer_tail_memcheck 300
step layer_tail_bench 400
step layer_tail_wide 480
step serve_tail_compare 560
step serve_event_loops 580
step serve_prefill_hold 580
step serve_fronts 580
step serve_fronts_vision2 580
step serve_fronts_hold 580
step serve_fronts_low 580
step serve_final 580
step serve_final_fronts 420
step serve_targets_high 560
step serve_c1_layouts 420
step serve_targets_low 580
step serve_connections 560
step gemm_codes 480
step overlap 400
step serve_overlap 580
step early_loads 500
step decode_plan_sweep 540
step layer_plans 540
step int4_attention 560
step dense_prefill 420
step serve_dense_compare 400
step serve_dense_prefill 580
step serve_mps 580
step serve_mps_acc 400
step serve_mps_prep16 400
step serve_layouts 480
step decode_matrix_2b 560
step decode_matrix_7b_fp16 580
step decode_matrix_7b_w4a16 580
step serve_overlap1 560
step codes_engine 400
step wgmma 560
step wgmma_ncu 200
step strip_default 560
step dequant_129 580
step wgmma_cluster 500
step cluster_auto 400
step wgmma_engine 560
step pyenv 30
step prep_check 150
step prep_serve 400
step leads_serve 480
step prep_bench 120
step vision 300
step vtests 200
step serve_compile 480
step serve_preprocess 540
step serve_prep_default 300
step serve_interval 480
step serve_interval4 300
step rope 300
step dequant 200
step dequant_chunks 560
step tests 300
step dtests 360
step dense 420
step stages16 480
step dense_check 240
step ktests 200
step attn_latency 200
step ncu_attn_source 240
step serve 420
step threads 420
step serve_leads 500
step wtests 120
step gtests 280
step wgtests 240
step gemm_new 120
step gemm_full 300
step gemm_apart 420
step etests 330
step prefill 200
step trace 200
step quick 150
step trace64 120
step trace7b 240
step sampling 200
step device_sampling 400
step serve_sampled 560
step ncu_attn 150
step serve_compare 330
step serve_chunk 560
step serve_dequant_chunks 580
step serve_compare_codes 330
step serve_llava 560
step serve_llava_compare 560
step serve_variants 400
step attn_ab 200
step decode_table 240
step attn_b1 100
step serve_c1 150
step ncu_gemm 150
step ncu_tail 420
step base_build 300
step ab_decode 420
step ab_gemm 200
step trace_b1 150
step push_sum 560
step ncu_source 300
step push_quick 200
step evict_ab 560
step policy_ab 560
step lm_head_ab 560
step head_argmax 400
step head_norm 400
step fp16_attention 480
step etests_fp16 330
step step_probe 480  # 17 GPU tests, then 4 shapes x 7 forms x 2 models of 20-step graphs
step long_k_engine 360
step ncu_gemm64 150
step decode_new 240
step sanitize 200
step decode_7b 150
step profile 200
step gemm 240
step decode 400
pack
