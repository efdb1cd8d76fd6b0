"""pixtok.training."""
