"""The field's classic visualization methods, on the same Network and optimisation loop as DFV.

Modules: ``actmax`` (activation maximisation with FFT/decorrelated parametrisation and transforms),
``deconvnet`` (Zeiler & Fergus projections), ``occlusion`` (sliding grey square), ``multifaceted``
(Nguyen et al. facets from clustered exemplars), ``inversion`` (Mahendran & Vedaldi), ``dissection``
(Bau et al. IoU against concept masks). Each has its subcommand in :mod:`diversevis.cli` (``cli/<command>.py``).

Larger methods keep their parts in sibling modules named after them, re-exported by the method's module:
``deconvnet_trace`` (the forward chain of leaf modules),
``deconvnet_result``, ``multifaceted_facets`` (exemplars, embedding, k-means facets),
``multifaceted_result``, ``multifaceted_settings``, ``dissection_stats`` (quantiles, masks, IoU
counts), ``dissection_result``; ``concepts`` holds dissection's datasets (argument checks are
:mod:`diversevis.core.checks`). The settings classes (``ActmaxSettings``, ``MultifacetedSettings``,
``InversionSettings``) hold each method's defaults and validation.
"""
