"""vlmserve lite auto_awq MODEL --work-dir OUT: AWQ 4-bit weights (flags as in LMDeploy's `lmdeploy lite auto_awq`)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    lite = sub.add_parser("lite", help="compress a model (AWQ 4-bit weights)")
    lite_sub = lite.add_subparsers(dest="lite_command", required=True)
    p = lite_sub.add_parser("auto_awq", help="AWQ 4-bit quantization of the language model, layer by layer",
                            description="Quantizes the language model's q/k/v/o/gate/up/down linears to 4 bits "
                                        "(AWQ, asymmetric, AutoAWQ 'gemm' layout) one decoder layer at a time; "
                                        "embeddings, lm_head, norms, vision tower and projector are kept.")
    env = os.environ.get
    p.add_argument("model", help="full-precision HF checkpoint directory (LLM, LLaVA, InternVL, Idefics3/SmolVLM)")
    p.add_argument("--work-dir", required=True, help="output directory (written whole, then renamed into place)")
    p.add_argument("--calib-dataset", default="wikitext2",
                   help="wikitext2 (shipped, validation split) or a local .txt / .jsonl file")
    p.add_argument("--calib-samples", type=int, default=128, help="number of calibration windows")
    p.add_argument("--calib-seqlen", type=int, default=2048, help="tokens per calibration window")
    p.add_argument("--w-bits", type=int, default=4, help="weight bits (4)")
    p.add_argument("--w-group-size", type=int, default=128, help="inputs per quantization group (32, 64, 128)")
    p.add_argument("--batch-size", type=int, default=1, help="calibration windows per forward (bounds activation memory)")
    p.add_argument("--search-scale", action="store_true",
                   help="grid-search the smoothing exponent per group of linears (default: 0.5)")
    p.add_argument("--search-clip", "--clip", dest="search_clip", action="store_true",
                   help="also search how far to clip each weight group's range")
    p.add_argument("--search-samples", type=int, default=8,
                   help="calibration windows used by the searches (statistics use all)")
    p.add_argument("--device", default=env("VLMSERVE_LITE_DEVICE", "auto"),
                   help="auto (cuda when torch sees one), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="compute dtype (auto: float32 on cpu, the model's half type on cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the calibration windows")
    p.add_argument("--summary-json", default=None, help="also write the run's summary (time, memory, errors) here")
    p.set_defaults(func=run)


def run(a) -> int:
    from vlmserve.lite.auto_awq import AwqOptions, prepare, quantize

    opts = AwqOptions(calib_dataset=a.calib_dataset, calib_samples=a.calib_samples, calib_seqlen=a.calib_seqlen,
                      w_bits=a.w_bits, w_group_size=a.w_group_size, batch_size=a.batch_size,
                      search_scale=a.search_scale, search_clip=a.search_clip, search_samples=a.search_samples,
                      device=a.device, dtype=a.dtype, seed=a.seed, progress=sys.stderr.isatty())
    plan = prepare(a.model, a.work_dir, opts)
    cal = plan.calibration
    print(f"{plan.spec.family} model {plan.model}: {plan.spec.num_layers} layers, AWQ w4 g{opts.w_group_size}"
          f"{' +search-scale' if opts.search_scale else ''}{' +search-clip' if opts.search_clip else ''} "
          f"on {plan.device} ({str(plan.dtype).replace('torch.', '')}); calibration {cal.source}: "
          f"{opts.calib_samples} x {opts.calib_seqlen} tokens of {cal.total_tokens}", file=sys.stderr)
    if cal.note:
        print(f"note: {cal.note}", file=sys.stderr)
    summary = quantize(plan)
    print(summary.table())
    print(f"wrote {plan.work_dir}")
    if a.summary_json:
        Path(a.summary_json).write_text(json.dumps(summary.to_json(), indent=2))
    return 0
