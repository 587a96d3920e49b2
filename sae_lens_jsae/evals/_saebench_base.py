"""SAEBench's eval-output base classes and run helpers, or stand-ins when SAEBench is absent.

SAEBench is the optional `saebench` extra. Without it `jsae eval` still writes the
`jacobian_sparsity` / `jacobian_linearity` JSONs in SAEBench's layout (same fields, the shipped
schemas) through the stand-ins below, and SAEBench's core eval is skipped with
`SAE_BENCH_MISSING` as the reason. With SAEBench installed, SAEBench's own classes are used.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

from pydantic import Field
from pydantic.dataclasses import dataclass

SAE_BENCH_MISSING: str | None = None  # why SAEBench cannot be used; None when it can

try:
    from sae_bench.evals.base_eval_output import (
        DEFAULT_DISPLAY,
        BaseEvalConfig,
        BaseEvalOutput,
        BaseMetricCategories,
        BaseMetrics,
        BaseResultDetail,
    )
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] != "sae_bench":
        raise  # SAEBench is there but one of its own dependencies is not: show that error
    SAE_BENCH_MISSING = "sae_bench is not installed (pip install 'sae-lens-jsae[saebench]')"

    DEFAULT_DISPLAY = {"ui_default_display": True}

    @dataclass
    class BaseEvalConfig:  # type: ignore[no-redef]
        """Stand-in for SAEBench's BaseEvalConfig."""

    @dataclass
    class BaseMetrics:  # type: ignore[no-redef]
        """Stand-in for SAEBench's BaseMetrics."""

    @dataclass
    class BaseMetricCategories:  # type: ignore[no-redef]
        """Stand-in for SAEBench's BaseMetricCategories."""

    @dataclass
    class BaseResultDetail:  # type: ignore[no-redef]
        """Stand-in for SAEBench's BaseResultDetail."""

    _C = TypeVar("_C")
    _M = TypeVar("_M")
    _D = TypeVar("_D")

    @dataclass
    class BaseEvalOutput(Generic[_C, _M, _D]):  # type: ignore[no-redef]
        """Stand-in for SAEBench's BaseEvalOutput: the same fields, in the same order."""

        eval_type_id: str = Field()
        eval_config: _C = Field()
        eval_id: str = Field()
        datetime_epoch_millis: int = Field()
        eval_result_metrics: _M = Field()
        eval_result_details: list[_D] = Field(None)  # type: ignore[assignment]
        sae_bench_commit_hash: str = Field()
        sae_lens_id: str | None = Field()
        sae_lens_release_id: str | None = Field()
        sae_lens_version: str | None = Field()
        sae_cfg_dict: dict[str, Any] | None = Field()
        eval_result_unstructured: Any | None = Field(default=None)

        def to_json_file(self, file_path: str, indent: int = 2) -> None:
            with open(file_path, "w") as f:
                json.dump(asdict(self), f, indent=indent, default=str)


def require_sae_bench(what: str) -> None:
    """Raise a one-line ModuleNotFoundError naming `what` when SAEBench is not installed."""
    if SAE_BENCH_MISSING is not None:
        raise ModuleNotFoundError(f"{what} needs SAEBench: {SAE_BENCH_MISSING}")


def run_helpers() -> tuple[str, str, str, Any, Any]:
    """(eval id, SAELens version, SAEBench version, get_results_filepath, load_and_format_sae).

    SAEBench's own helpers when it is installed; otherwise equivalents for SAE objects (a
    release/sae_id string needs SAEBench's loader and raises).
    """
    if SAE_BENCH_MISSING is None:
        from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_bench_version, get_sae_lens_version
        from sae_bench.sae_bench_utils.general_utils import get_results_filepath, load_and_format_sae

        return get_eval_uuid(), get_sae_lens_version(), get_sae_bench_version(), get_results_filepath, load_and_format_sae

    def results_filepath(output_path: str, release: str, sae_id: str) -> str:
        return os.path.join(output_path, f"{release}_{sae_id}_eval_results.json".replace("/", "_"))

    def load_sae_object(release: str, sae: Any, device: str) -> tuple[str, Any, None]:
        if isinstance(sae, str):
            require_sae_bench(f"loading {release}/{sae} by name")
        return "custom_sae", sae, None  # SAEBench's id for an SAE passed as an object

    try:
        lens_version = version("sae_lens")
    except PackageNotFoundError:
        lens_version = "Unknown"
    return str(uuid.uuid4()), lens_version, "not installed", results_filepath, load_sae_object
