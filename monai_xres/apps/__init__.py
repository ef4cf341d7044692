"""Applications built on the core: ``runner`` (MONAI bundle runs with the explain overlay and the
bundle's evaluation), ``cohort`` (many scans over ``torchrun`` ranks, resumable), ``demo`` (the shipped
bundles and sample cases), ``nnunet`` (trained nnU-Net v2 model folders, with the optional ``nnunet``
extra: ``nnunet_folder``, ``nnunet_loader``, ``nnunet_inferer``, ``nnunet_geometry``, ``nnunet_run``,
``nnunet_sample``)."""
