"""The EMNIST Digits -> MNIST experiment of Lee, Cho, Kang (ICLR 2020, Section 4), and its ablations.

It uses the library (:mod:`mixout_theory`), never the reverse; import the modules you need:

* :mod:`~.sources`, :mod:`~.formats` -- the raw MNIST / EMNIST files, fetched and verified;
  :mod:`~.data` -- splits, the cache, :func:`~.data.load_experiment`; :mod:`~.standin` -- the
  stand-in source task; :mod:`~.shift` -- how far source and target differ;
* :mod:`~.mlp` -- the paper's 784-300-100-10 MLP; :mod:`~.engine` -- the batched ensemble engine and
  :class:`~.engine.RunOptions`; :mod:`~.curvature` -- the L2 coefficient mixout implies on it;
* :mod:`~.store` -- atomic writes, hashes, the resumable run store;
* :mod:`~.sweep` -- pretraining and the p-sweep of Figure 2; :mod:`~.ablations` -- the GLUE-study
  questions at laptop scale;
* :mod:`~.report` -- summaries and the paper's claims checked; :mod:`~.plots` -- every figure.
"""
