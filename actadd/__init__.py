"""actadd: Activation Addition (Turner et al., arXiv 2308.10248) on minigpt.

Empty for now: the algorithm lands with its own issue, on top of minigpt's hook points
(`blocks.{L}.hook_resid_pre`).
"""
