"""Defaults shared by the index, the CLI and the service (no heavy imports here)."""
KINDS = ("auto", "flat", "ivf", "ivf_pca", "hnsw")
DEFAULT_APPROX_THRESHOLD = 50_000  # galleries this size and larger get an approximate (ivf_pca) index
DEFAULT_RECALL_TARGET = 0.98  # the approximate search breadth is raised until recall@10 reaches this
