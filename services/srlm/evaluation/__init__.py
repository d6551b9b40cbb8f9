"""srlm's evaluation suite: metrics (pure), the suite runner, the eval gate's evidence."""
