"""Characterization studies of ViT inference (RQ1-RQ5) and the attention scalability
ladder: declarative configs (``config``), the cell runners (``bench``, ``ladder``), the
inference pipeline (``pipeline``), NUMA binding (``numa``), profiling (``profiling``),
the resumable sweep runner (``runner``) and the ``sparsevit characterize`` CLI (``cli``).
"""
