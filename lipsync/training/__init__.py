"""Per-step training logic (losses, metrics) kept free of Ray and MLflow."""
