"""Where networks come from: the registry of model specs (:mod:`~diversevis.models.zoo`), the offline
VGG-16 and EfficientNet-Lite0 loaders, and synthetic cells with known invariances."""
