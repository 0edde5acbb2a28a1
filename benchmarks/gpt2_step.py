"""One LoRA training step of GPT-2 small: lora_np's hand-derived gradients vs PyTorch autograd + PEFT.

    python benchmarks/gpt2_step.py                 # GPT-2 small, batch 8 x 128 tokens, r = 8 on c_attn
    python benchmarks/gpt2_step.py --quick         # a tiny GPT-2, one round: checks that it runs

Both sides hold the same random weights (GPT-2 small's shapes; random weights cost the same as
trained ones), in float32, and run a step = forward, next-token cross-entropy, backward and an
AdamW update of A and B only.  Rounds are interleaved (lora_np, torch, lora_np, torch, ...)
after one untimed warm-up step each; the ratio is median(lora_np) / median(torch) within one
run, with the per-round min-max.  Both use the same number of threads.  Needs torch,
transformers and peft (a test-only extra); prints why it skips without them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import lora_np as ln  # noqa: E402
from lora_np import gpt2  # noqa: E402
from lora_np.train import cross_entropy  # noqa: E402

CONFIGS = {
    "full": dict(config=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), batch=8, seq_len=128,
                 rounds=5),
    "quick": dict(config=dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2), batch=2, seq_len=16, rounds=1),
}


def run(mode="full", threads=2, r=8, alpha=16, lr=1e-4, seed=0) -> dict:
    try:
        import peft
        import torch
        import transformers
    except ImportError as e:
        return {"skipped": f"needs torch, transformers and peft ({e.name} is missing)"}
    from threadpoolctl import threadpool_info, threadpool_limits

    c = CONFIGS[mode]
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    ours = gpt2.GPT2LMHeadModel(gpt2.GPT2Config(**c["config"]), dtype=np.float32, rng=seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**c["config"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():  # the same weights on both sides (Conv1D weights are (d_in, d_out) like ours)
        for name, (theirs, _) in gpt2._tensor_names(ours.config).items():
            *path, key = name.split(".")
            value = ours.get_submodule(".".join(path)).params[key]
            hf.get_parameter("transformer." + theirs).copy_(torch.from_numpy(value))
    ln.inject_lora(ours, r, alpha, targets=("c_attn",), rng=seed)
    opt = ln.AdamW(ours, lr=lr)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn"], lora_dropout=0.0))
    pm.train()
    topt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    tokens = rng.integers(0, c["config"]["vocab_size"], (c["batch"], c["seq_len"] + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step_numpy():
        loss, dlogits = cross_entropy(ours.forward(x), y)
        ours.backward(dlogits)
        opt.step()
        return loss

    def step_torch():
        topt.zero_grad(set_to_none=True)
        logits = pm(tx).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1))
        loss.backward()
        topt.step()
        return loss.item()

    times = {"lora_np": [], "torch": []}
    with threadpool_limits(limits=threads, user_api="blas"):
        blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
        losses = (step_numpy(), step_torch())  # warm-up, untimed; the same start loss on both sides
        for i in range(c["rounds"]):
            order = [("lora_np", step_numpy), ("torch", step_torch)]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["lora_np"], times["torch"])]
    return {
        "mode": mode, "config": c["config"], "batch": c["batch"], "seq_len": c["seq_len"], "r": r, "targets": ["c_attn"],
        "threads": threads, "rounds": c["rounds"], "blas": blas, "torch": torch.__version__, "peft": peft.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(), "first_losses": [float(v) for v in losses],
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio": statistics.median(times["lora_np"]) / statistics.median(times["torch"]),
        "ratio_range": [min(ratios), max(ratios)],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpt2_step.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny GPT-2 and one round: checks that the code runs")
    p.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (default 2)")
    p.add_argument("--out", default=None, help="write the result as JSON to this file")
    args = p.parse_args(argv)
    res = run("quick" if args.quick else "full", threads=args.threads)
    if "skipped" in res:
        print("GPT-2 step benchmark skipped:", res["skipped"])
    else:
        m = res["median_s"]
        print(f"GPT-2 ({res['config']['n_embd']}x{res['config']['n_layer']}) LoRA step, batch {res['batch']} x "
              f"{res['seq_len']}, r = {res['r']} on c_attn, {res['threads']} threads, {res['rounds']} rounds")
        print(f"  lora_np {m['lora_np']:.3f} s   torch {res['torch']} + peft {res['peft']} {m['torch']:.3f} s   "
              f"ratio {res['ratio']:.3f} ({res['ratio_range'][0]:.3f}-{res['ratio_range'][1]:.3f})")
        print(f"  first loss lora_np {res['first_losses'][0]:.4f}, torch {res['first_losses'][1]:.4f}; "
              f"load average {', '.join(f'{v:.2f}' for v in res['load_average'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
