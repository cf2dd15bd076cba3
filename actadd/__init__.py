"""actadd: Activation Addition (Turner et al., arXiv 2308.10248) on minigpt, as a plain array
addition at blocks.{L}.hook_resid_pre. Read actadd/steering.py top to bottom for the method."""

from .steering import (
    ALIGNMENTS,
    PADDINGS,
    PAPER_SAMPLING,
    ActivationAddition,
    NormReport,
    SideBySide,
    SteeringVector,
    addition,
    generate,
    norm_report,
    row_hooks,
    site,
    steering_vector,
    tokens_with_bos,
    x_vector,
)
from .interpret import calibrate, lens
from .pairs import DirectionVector, mean_of_pairs, pair_report, read_pairs
from .vector_io import VectorFileError, export_gguf, import_gguf, load, save, weights_hash

__all__ = ["ActivationAddition", "SteeringVector", "SideBySide", "NormReport", "VectorFileError", "addition",
           "x_vector", "steering_vector", "generate", "norm_report", "row_hooks", "save", "load", "weights_hash", "site",
           "tokens_with_bos", "ALIGNMENTS", "PADDINGS", "PAPER_SAMPLING", "DirectionVector", "mean_of_pairs", "read_pairs",
           "pair_report", "calibrate", "lens", "export_gguf", "import_gguf"]
