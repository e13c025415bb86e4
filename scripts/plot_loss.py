"""Plot training loss logs (``loss_log.jsonl`` of ``panoptic-deploy train``) to a PNG.

Several logs are stages of one model (from scratch, then fine-tuning from its weights): they are drawn one
after the other on a common iteration axis, with a line where each stage starts.

python scripts/plot_loss.py docs/training/loss_log.jsonl docs/training/finetune_loss_log.jsonl \
    docs/training/loss_curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TERMS = ("loss", "loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st")
COLOURS = dict(zip(TERMS, ("C0", "C1", "C2", "C3", "C4"), strict=True))


def main(logs: list[str], out: str) -> None:
    fig, (ax, lr_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    offset = 0
    for stage, log in enumerate(logs):
        lines = Path(log).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        iters = [offset + r["iteration"] for r in rows]
        for term in TERMS:
            ax.plot(iters, [r[term] for r in rows], color=COLOURS[term], label=term if stage == 0 else None,
                    linewidth=1.6 if term == "loss" else 0.9)  # fmt: skip
        lr_ax.plot(iters, [r["lr"] for r in rows], color="black", linewidth=1)
        if stage > 0:
            for a in (ax, lr_ax):
                a.axvline(offset, color="grey", linestyle="--", linewidth=1)
            ax.text(offset, ax.get_ylim()[1], f" stage {stage + 1} ({Path(log).name})", fontsize=7, va="top")
        offset = iters[-1]
    ax.set_yscale("log")
    ax.set_ylabel("loss (weighted terms)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("iteration (32 images each)")
    lr_ax.grid(True, alpha=0.3)
    fig.suptitle("PanopticFCN demo model (configs/PanopticFCN-R50-demo-scenes.yaml)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot_loss.py LOG [LOG ...] OUT.png")
    main(sys.argv[1:-1], sys.argv[-1])
