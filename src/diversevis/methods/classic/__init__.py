"""The field's classic visualization methods, on the same Network and optimisation loop as DFV.

Modules: ``actmax`` (activation maximisation with FFT/decorrelated parametrisation and transforms),
``deconvnet`` (Zeiler & Fergus projections), ``occlusion`` (sliding grey square), ``multifaceted``
(Nguyen et al. facets from clustered exemplars), ``inversion`` (Mahendran & Vedaldi), ``dissection``
(Bau et al. IoU against concept masks). Each has its subcommand in :mod:`diversevis.cli` (``cli/<command>.py``).
"""
