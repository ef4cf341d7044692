"""``python -m monai_xres.sample_data --out-dir DIR --seeds ...`` (see :mod:`monai_xres.sample_data.command`)."""

from monai_xres.sample_data.command import main

main()
