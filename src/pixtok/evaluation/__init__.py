"""pixtok.evaluation."""
