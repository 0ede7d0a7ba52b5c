"""The engine every method shares.

``Network`` (wrapping a user's module, layers, truncated forward), receptive fields, image
parametrisations, transforms, objectives, the one optimisation loop, precision, results and atomic
files. Nothing here imports from ``images``, ``models``, ``methods``, ``study`` or ``cli``.
"""
