"""Dataset readers and the plain records they return."""
from tbps.data.datasets import DATASETS, DatasetWarning, load_dataset
from tbps.data.records import Dataset, EvalSplit, TrainSample

__all__ = ["DATASETS", "Dataset", "DatasetWarning", "EvalSplit", "TrainSample", "load_dataset"]
