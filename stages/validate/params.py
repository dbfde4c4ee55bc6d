"""Settings of the ``validate`` kind: what to measure and the gates a candidate must pass."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.bounds import at_least


@dataclass
class GatesParams:
    max_accuracy_drop: float | None = None
    min_top1_agreement: float | None = None
    # mean cosine over the evaluation samples, and the lowest single sample's: a mean of 0.99
    # can hide samples at 0.9 (an embedding model's worst inputs)
    min_cosine: float | None = None
    min_sample_cosine: float | None = None
    # candidate p50 speedup over the FP32 reference on the validating EP (1.0 = as fast)
    min_speedup: float | None = None
    max_abs_diff: float | None = None
    # mean over token positions of KL(softmax FP32 || softmax candidate), for outputs shaped
    # (batch, sequence, vocabulary); padding (attention_mask 0) does not count
    max_kl_divergence: float | None = None
    # nodes the target's first-choice EP leaves to the CPU EP (0 = none); measured only where
    # that EP runs here
    max_cpu_fallback_nodes: int | None = at_least(0, None)


@dataclass
class ValidateParams:
    samples: int = at_least(1, 256)
    latency_runs: int = at_least(1, 30)
    warmup_runs: int = at_least(0, 3)
    gates: GatesParams = field(default_factory=GatesParams)
    # validate with session.disable_cpu_ep_fallback: a node the target's EPs cannot take fails
    forbid_cpu_fallback: bool = False
    # run a target whose onnxruntime distribution is not the host's in an isolated environment
    # of its own ($EDGEKILN_ENV_DIR, default ~/.cache/edgekiln/envs); false: host runtime only
    isolated_runtime: bool = True
    # sample inputs with the candidate's expected outputs written to samples.npz (self-test)
    bundle_samples: int = at_least(1, 4)
