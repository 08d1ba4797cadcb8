"""Per-step training logic (losses, metrics) kept free of Ray and MLflow.

``STAGES`` is the stage table, the only one: the one Ray Train loop and driver
(pipelines/train/) and the training command's flags (from each stage's recipe fields) work
for any stage listed here (lipsync/training/stage.py says what a stage provides).
"""

from lipsync.training.expert import ExpertRecipe, ExpertStage
from lipsync.training.generator import GeneratorRecipe, GeneratorStage

STAGES = {"expert": ExpertStage, "generator": GeneratorStage}

__all__ = ["STAGES", "ExpertRecipe", "ExpertStage", "GeneratorRecipe", "GeneratorStage"]
