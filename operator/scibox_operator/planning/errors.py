"""The one error type of the planner: a machine reason plus a sentence for people."""

from __future__ import annotations


class PlanError(ValueError):
    """A plan cannot be made; `reason` is a CamelCase word for a status condition.

    Reasons in use: InvalidModelConfig, UnsupportedArchitecture, UnknownGpu,
    UnsupportedDtype, UnsupportedQuantization, QuantizationMismatch,
    InvalidParallelSize, TensorParallelNotDivisor, TensorParallelExceedsNode,
    PipelineParallelTooLarge, InvalidGpuMemoryUtilization, MaxModelLenTooLarge,
    ModelTooLarge, InsufficientKvCache, TooManyNodes.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (type(self), (self.reason, self.message))
