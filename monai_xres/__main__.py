"""``python -m monai_xres ...`` (also under ``torchrun``) is the ``monai-xres`` command."""

import sys

from monai_xres.cli import main

sys.exit(main())
