"""PRCL: semi-supervised semantic segmentation with probabilistic representations.

Library first: ``prcl.models`` (DeepLabv3+ with mean, variance and class heads),
``prcl.losses`` (mutual likelihood score, distribution prototypes, the PRCL loss),
``prcl.data`` (datasets, splits and both augmentation pipelines), ``prcl.engine`` (the
mean-teacher trainer). The ``prcl`` command line sits on top of them.
"""

__version__ = "0.1.0"
