"""The benchmark of lora_np, one module per section; ``benchmarks/run.py`` is the entry point.

Where to find what:
    config.py      sizes of the full and quick modes, the targets, the learning rate
    timing.py      interleaved rounds, medians, ratios, the load average
    steps.py       what one training step is: a layer, the MLP, the transformer (+ AdamW)
    kernel.py      which BLAS kernel runs, and the environment that picks one
    layer.py       sections 1, 2 and 7: one layer, LoRA vs full vs the GEMM floor, where the
                   adapter's time goes, the step time as d and r grow
    models.py      section 1 for whole models: the MLP and the transformer
    inference.py   section 3: merged and unmerged inference vs the base layer
    memory.py      section 4: trainable parameters, AdamW state, peak traced memory
    torch_cmp.py   section 5: NumPy hand-derived vs PyTorch autograd on the CPU
    gpu.py         section 6: CuPy vs NumPy (only with CuPy and a GPU)
    report.py      the text report, the targets, the README's table
    plots.py       the figures in benchmarks/results/
    blas_beta.py   benchmark only: a GEMM that accumulates (C = A @ B + C) from NumPy's
                   bundled OpenBLAS, to measure what NumPy's lack of one costs
"""
