"""What runs around a stage but does not shape its outputs: the stage runner, MLflow tracking."""
