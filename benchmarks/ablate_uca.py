"""UCA ablation on the embedded benchmark: IRRA baseline, then UCA's parts added one at a time.

    python benchmarks/ablate_uca.py                  # 6 paper-step variants + 5 probes, x 3 seeds, fine-tuned, resumable
    python benchmarks/ablate_uca.py --seeds 1 --variants irra uca_full
    python benchmarks/ablate_uca.py --scratch        # the same grid from random weights (4 epochs)

By default every run fine-tunes from the shipped foundation:tiny-clip (irra_tiny, uca_tiny) at the
configs' own epochs; `--epochs N` sets the budget, `--seeds N` the seeds 0..N-1.

Writes benchmarks/results/ablate_uca.{md,json} (`_scratch` with --scratch): test Rank-1 and mAP
(mean ± std over seeds) and the Spearman correlation between query-uncertainty bin and Rank-1 (strongly negative = the
uncertainty predicts errors), terse vs detailed captions' mean uncertainty, and the excess AURC
(AURC minus the oracle's at the same accuracy: at 6-16% Rank-1 raw AURC is mostly 1 - accuracy),
and the answers to the paper's questions.
"""
from __future__ import annotations

from typing import Any

from _ablation import below_zero, compare, parse_args, run_ablation, values

OFF = "method.loss_weights.{}=0"
VARIANTS = {
    "irra": ("irra_tiny", []),
    "uca_dist+dcl": ("uca_tiny", [OFF.format("pcl_inter"), OFF.format("pcl_intra"), OFF.format("rec")]),
    "uca_+pcl_inter": ("uca_tiny", [OFF.format("pcl_intra"), OFF.format("rec")]),
    "uca_+pcl_intra": ("uca_tiny", [OFF.format("rec")]),
    "uca_+rec_mean": ("uca_tiny", ["method.rec_points=mean"]),
    "uca_full": ("uca_tiny", []),
    # Not one of the paper's steps: full UCA with a 5x lower intra-modal point-contrast weight, the
    # term that flips the uncertainty's sign at the default 0.5 (README, "Ablations").
    "uca_full_intra0.1": ("uca_tiny", ["method.loss_weights.pcl_intra=0.1"]),
    # Leads on why the sign flips (issue 12), not paper steps. The old intra-modal rule, which kept
    # pairs of rows showing the same picture as positives (the grid before `intra_exclude: image`):
    "uca_full_intra_by_item": ("uca_tiny", ["method.intra_exclude=item"]),
    # intra-modal point contrast trains the means only; the variances learn from DCL, PCL-inter, KL:
    "uca_full_intra_means_only": ("uca_tiny", ["method.pcl_intra_means_only=true"]),
    # the variance head also reads the embedding's length:
    "uca_full_var_length": ("uca_tiny", ["method.var_sees_length=true"]),
    # OMRE-style (Yifei-AHU/OMRE): no point-to-point contrast; means against the other side's K = 3
    # samples; variances held up by a one-sided hinge on the Gaussian entropy (weight 0.1):
    "uca_omre": ("uca_tiny", [OFF.format("pcl_inter"), OFF.format("pcl_intra"), "method.num_samples=3",
                              "method.loss_weights.pcl_mean=1.0", "method.loss_weights.entropy=0.1"]),
}


def uncertainty_columns(metrics: dict[str, Any]) -> dict[str, float]:
    extra = metrics.get("extra") or {}
    if "rank1_by_uncertainty_bin" not in extra:
        return {}
    tvd = extra["terse_vs_detailed"]
    return {"spearman": extra["rank1_by_uncertainty_bin"]["spearman"],
            "u terse": tvd["terse"]["mean_uncertainty"] or float("nan"),
            "u detailed": tvd["detailed"]["mean_uncertainty"] or float("nan"),
            "e-AURC": extra["risk_coverage"]["e_aurc"]}


def paper_questions(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Does full UCA beat IRRA, and does its query uncertainty predict failure?"""
    def tvd(kind: str):
        return lambda m: m["extra"]["terse_vs_detailed"][kind]["mean_uncertainty"]
    return [compare("Does UCA beat IRRA?", "uca_full t2i R1", values(runs, "uca_full", lambda m: m["t2i"]["R1"]),
                    "irra t2i R1", values(runs, "irra", lambda m: m["t2i"]["R1"])),
            below_zero("Does query uncertainty predict failure (Spearman of uncertainty decile vs Rank-1 below 0)?",
                       "uca_full Spearman",
                       values(runs, "uca_full", lambda m: m["extra"]["rank1_by_uncertainty_bin"]["spearman"])),
            compare("Are terse captions more uncertain than detailed ones?", "uca_full terse",
                    values(runs, "uca_full", tvd("terse")), "detailed", values(runs, "uca_full", tvd("detailed")))]


if __name__ == "__main__":
    args = parse_args("ablate_uca")
    run_ablation("ablate_uca", VARIANTS, args, tasks=["t2i"], extra=uncertainty_columns, questions=paper_questions)
