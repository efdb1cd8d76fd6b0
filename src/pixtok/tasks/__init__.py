"""pixtok.tasks."""
