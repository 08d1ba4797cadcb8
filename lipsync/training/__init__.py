"""Per-step training logic (losses, metrics) kept free of Ray and MLflow.

``STAGES`` is the stage table: the one Ray Train loop and driver (pipelines/) run any
stage listed here (lipsync/training/stage.py says what a stage provides).
"""

from lipsync.training.expert import ExpertRecipe, ExpertStage
from lipsync.training.generator import GeneratorRecipe, GeneratorStage

STAGES = {"expert": ExpertStage, "generator": GeneratorStage}
RECIPES = {"expert": ExpertRecipe, "generator": GeneratorRecipe}
