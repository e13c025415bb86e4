"""PanopticFCN training in plain PyTorch: targets, losses, data, solver and the training loop.

Spec: ``panopticfcn-training.md`` (targets §2, forward §3, losses §4, solver §5, from-scratch advice §6.2).
"""
