"""Section 1 for whole models: a LoRA step against a full fine-tuning step on the MLP and the
small transformer (every hidden layer adapted in the MLP; q and v in the transformer)."""

from .steps import mlp_cases, transformer_cases
from .timing import interleaved, load_average, ratio, stats


def section_models(c, log):
    out = {}
    for name, cases in (("mlp", mlp_cases(c["mlp_sizes"], c["n"])), ("transformer", transformer_cases(c["transformer"], c["batch"]))):
        load = load_average()
        log(f"  {name}: 2 cases x {c['repeats']} rounds (load {load})")
        times = interleaved(cases, c["repeats"])
        out[name] = {"times": {k: stats(v) for k, v in times.items()}, "lora_vs_full": ratio(times, "lora r=8", "full"),
                     "load_average": load}
    out["mlp"]["config"] = {"sizes": c["mlp_sizes"], "n": c["n"], "lora": "layers.*, r=8, alpha=16"}
    out["transformer"]["config"] = {**c["transformer"], "batch": c["batch"], "lora": "q, v, r=8, alpha=16", "loss": "cross-entropy"}
    return out
