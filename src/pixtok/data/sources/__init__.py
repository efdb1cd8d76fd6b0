"""pixtok.data.sources."""
