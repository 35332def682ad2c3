"""Datasets as whole tensors in memory, and their partitions over clients.

- :mod:`~fedbackdoor.data.image_data`: :class:`ImageData`, what every loader returns;
- :mod:`~fedbackdoor.data.torchvision_sets`, :mod:`~fedbackdoor.data.synthetic`: one loader per
  dataset, the ``_target_`` of ``conf/dataset/<name>.yaml``;
- :mod:`~fedbackdoor.data.loading`: a config's ``dataset`` node to its data, once per process;
- :mod:`~fedbackdoor.data.partition`: client partitions (flwr-datasets' partitioners).

Nothing is imported here, so a client that needs one module pays for no other.
"""
