"""The model stages: base model, training, evaluation."""
