"""Data pipeline and PSNR metric for the image super-resolution experiment (paper Section IV-C)."""
