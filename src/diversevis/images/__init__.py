"""Natural images and what is learnt from them: photos, patches and their statistics (contrast norms,
colour covariance), and the PixelCNN natural-image prior. Builds on :mod:`diversevis.core` only."""
