"""Plot a training loss log (``loss_log.jsonl`` of ``panoptic-deploy train``) to a PNG.

python scripts/plot_loss.py docs/training/loss_log.jsonl docs/training/loss_curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TERMS = ("loss", "loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st")


def main(log: str, out: str) -> None:
    rows = [json.loads(line) for line in Path(log).read_text(encoding="utf-8").splitlines() if line.strip()]
    iters = [r["iteration"] for r in rows]
    fig, (ax, lr_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for term in TERMS:
        ax.plot(iters, [r[term] for r in rows], label=term, linewidth=1.6 if term == "loss" else 0.9)
    ax.set_yscale("log")
    ax.set_ylabel("loss (weighted terms)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    lr_ax.plot(iters, [r["lr"] for r in rows], color="black", linewidth=1)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("iteration (32 images each)")
    lr_ax.grid(True, alpha=0.3)
    fig.suptitle("PanopticFCN demo model (configs/PanopticFCN-R50-demo-scenes.yaml), H200")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
