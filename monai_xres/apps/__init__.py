"""Applications built on the core: ``runner`` (MONAI bundle runs with the explain overlay and the
bundle's evaluation), ``cohort`` (many scans over ``torchrun`` ranks, resumable), ``demo`` (the shipped
bundles and sample cases)."""
