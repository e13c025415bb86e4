"""Benchmark one (backend, precision) on the evaluation images: latency, throughput, memory and accuracy.

Backends (:data:`panoptic_deploy.vocab.BENCH_BACKENDS`):

* ``torch``: eager PyTorch. FP32 on CPU or CUDA; FP16 on CUDA through ``torch.autocast`` (the mixed precision
  a PyTorch user would pick; FP32 I/O, reductions in FP32).
* ``torch_compile``: ``torch.compile`` of the network (CUDA; FP32 or FP16 autocast), a further peer row.
  Compilation happens in the first warm-up call; its time is recorded separately.
* ``onnxruntime``: an engine of :mod:`panoptic_deploy.engines.onnxruntime` (CPU provider).
* ``tensorrt``: an engine of :mod:`panoptic_deploy.engines.tensorrt` (CUDA).

Accuracy is measured against the torch FP32 CPU reference (written once per model and read by every
benchmark): tensor error statistics per output and panoptic agreement (:mod:`panoptic_deploy.compare`), plus
PQ against ground truth when a COCO panoptic dataset is given.

One module per concern; this package imports none of them, so that ``import panoptic_deploy.bench.results``
(what the report reads) loads no torch:

* :mod:`~panoptic_deploy.bench.results`: the result dataclasses and their JSON file (torch-free).
* :mod:`~panoptic_deploy.bench.reference`: the torch FP32 reference file.
* :mod:`~panoptic_deploy.bench.panoptic_store`: every image's panoptic map as COCO panoptic PNG + JSON.
* :mod:`~panoptic_deploy.bench.runners`: what runs where, and one runner per backend.
* :mod:`~panoptic_deploy.bench.environment`: the machine and library versions.
* :mod:`~panoptic_deploy.bench.accuracy`: PQ against ground truth.
* :mod:`~panoptic_deploy.bench.run`: :class:`~panoptic_deploy.bench.run.BenchSpec` -> :func:`run_bench`.
"""
