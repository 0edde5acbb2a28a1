"""Sizes of each mode, the targets of the performance issues, and the step's learning rate."""

# n = batch x tokens (rows of x) for the single-layer benchmarks.
CONFIGS = {
    "full": dict(
        n=2048, ds=[512, 1024, 2048, 4096], d_main=2048, rs=[1, 4, 8, 16, 64, 256], r_main=8,
        overhead_rs=[1, 8, 64], repeats=7, inference_repeats=21, profile_repeats=15,
        mlp_sizes=[1024, 1024, 1024, 1024],
        transformer=dict(vocab_size=512, block_size=128, d_model=512, n_head=8, n_layer=2), batch=16,
        memory_ns=[256, 2048], torch_ds=[1024, 2048], gpu_ds=[1024, 2048, 4096],
    ),
    "quick": dict(
        n=64, ds=[32, 64], d_main=64, rs=[1, 2, 4], r_main=2,
        overhead_rs=[1, 2], repeats=1, inference_repeats=1, profile_repeats=1,
        mlp_sizes=[32, 32, 32],
        transformer=dict(vocab_size=16, block_size=8, d_model=16, n_head=2, n_layer=1), batch=4,
        memory_ns=[8], torch_ds=[64], gpu_ds=[64],
    ),
}
TARGETS = {
    "lora_vs_full_layer": 0.72,  # section 1, d = 2048, n = 2048, r = 8
    "lora_vs_products": 1.08,  # section 2, d = 2048, n = 2048, r = 8
    "lora_vs_products_large": 1.05,  # section 2, d = 4096, n = 2048, r = 8
    "merged_vs_base": 1.01,  # section 3
    "unmerged_vs_base": 1.03,  # section 3
    "numpy_vs_torch": 1.0,  # section 5, d >= 1024
}
LR = 1e-4  # small, so thousands of steps would not change the values' scale
