"""actadd: Activation Addition (Turner et al., arXiv 2308.10248) on minigpt, as a plain array
addition at blocks.{L}.hook_resid_pre. Read actadd/steering.py top to bottom for the method.

The method and its instruments are the modules here (steering, direction, pairs, vector_io,
measure, interpret, on provenance and output); the paper's experiments are actadd.experiments,
which imports the method and is never imported by it."""

from . import moved
from .direction import DirectionVector
from .interpret import calibrate, lens
from .pairs import mean_of_pairs, pair_report, read_pairs
from .provenance import weights_hash
from .steering import (
    ALIGNMENTS,
    PADDINGS,
    PAPER_SAMPLING,
    ActivationAddition,
    NormReport,
    SideBySide,
    Steering,
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
from .vector_io import VectorFileError, export_gguf, import_gguf, load, save

moved.install()

__all__ = ["ActivationAddition", "Steering", "SteeringVector", "DirectionVector", "SideBySide", "NormReport",
           "VectorFileError", "addition", "x_vector", "steering_vector", "generate", "norm_report", "row_hooks", "save",
           "load", "weights_hash", "site", "tokens_with_bos", "ALIGNMENTS", "PADDINGS", "PAPER_SAMPLING",
           "mean_of_pairs", "read_pairs", "pair_report", "calibrate", "lens", "export_gguf", "import_gguf"]
