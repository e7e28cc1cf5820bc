"""Red-team and training code: output-preserving attacks, structural derivatives (MoE upcycling, width pruning),
HuRef baselines, encoder training, synthetic data and token-set building. Tests and benchmarks use it; the product never imports it (an import contract checks that)."""
