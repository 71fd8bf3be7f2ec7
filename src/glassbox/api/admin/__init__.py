"""Administration routes (/admin/...): they need an API key with the 'admin' scope."""
