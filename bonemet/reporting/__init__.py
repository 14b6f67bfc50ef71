"""Human-readable outputs: the self-contained HTML report."""
