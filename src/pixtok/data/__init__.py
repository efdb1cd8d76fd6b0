"""pixtok.data."""
