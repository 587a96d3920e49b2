"""Where the package meets SAELens: registration, the private names it relies on, the weight-product cache."""

import subprocess
import sys
from importlib.metadata import version

import pytest
import torch
from helpers import make_tiny_model
from sae_lens import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

from sae_lens_jsae import JacobianSAE, JacobianSAEConfig, JacobianTrainingSAE, JacobianTrainingSAEConfig, build_jacobian_sae
from sae_lens_jsae.registration import ArchitectureConflictError, register, register_jacobian_architecture
from sae_lens_jsae.saelens_private import TESTED_SAELENS_VERSIONS, missing_private_api


@pytest.fixture
def scratch_name():
    name = "jsae-test-architecture"
    yield name
    SAE_CLASS_REGISTRY.pop(name, None)
    SAE_TRAINING_CLASS_REGISTRY.pop(name, None)


def test_register_adds_both_classes_and_repeating_it_is_a_no_op(scratch_name):
    classes = (JacobianSAE, JacobianSAEConfig, JacobianTrainingSAE, JacobianTrainingSAEConfig)
    register(scratch_name, *classes)
    register(scratch_name, *classes)
    assert SAE_CLASS_REGISTRY[scratch_name] == classes[:2]
    assert SAE_TRAINING_CLASS_REGISTRY[scratch_name] == classes[2:]
    register_jacobian_architecture()  # ours already: nothing happens
    assert SAE_CLASS_REGISTRY["jacobian"] == (JacobianSAE, JacobianSAEConfig)


@pytest.mark.parametrize("held_by", ["inference", "training"])
def test_register_refuses_a_name_held_by_other_classes(scratch_name, held_by):
    if held_by == "inference":
        SAE_CLASS_REGISTRY[scratch_name] = (TopKSAE, TopKSAEConfig)
    else:
        SAE_TRAINING_CLASS_REGISTRY[scratch_name] = (TopKTrainingSAE, TopKTrainingSAEConfig)
    before = (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
    with pytest.raises(ArchitectureConflictError, match=rf"'{scratch_name}' is already registered for {held_by} to sae_lens\..*TopK"):
        register(scratch_name, JacobianSAE, JacobianSAEConfig, JacobianTrainingSAE, JacobianTrainingSAEConfig)
    assert (SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY) == before  # neither registry was written


def test_jacobian_taken_by_another_package_raises_on_import():
    # a fresh interpreter where some other package registered "jacobian" first
    code = (
        "from sae_lens import TopKSAE, TopKSAEConfig\n"
        "from sae_lens.registry import register_sae_class\n"
        "register_sae_class('jacobian', TopKSAE, TopKSAEConfig)\n"
        "import sae_lens_jsae.sae\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "ArchitectureConflictError: SAELens architecture 'jacobian' is already registered for inference" in out.stderr


def test_registered_when_sae_lens_is_imported_after_the_package():
    code = (
        "import sys\n"
        "import sae_lens_jsae\n"
        "assert 'sae_lens' not in sys.modules and 'sae_lens_jsae.sae' not in sys.modules\n"
        "from sae_lens.registry import get_sae_class\n"
        "print(get_sae_class('jacobian')[0].__name__, get_sae_class('topk_transcoder')[0].__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["JacobianSAE", "TopKTranscoder"]


def test_private_saelens_names_still_exist_with_our_parameters():
    assert missing_private_api() == []


@pytest.mark.parametrize(
    ("break_saelens", "named"),
    [
        ("from sae_lens.training.sae_trainer import SAETrainer; del SAETrainer._train_step", "SAETrainer._train_step: missing"),
        ("from sae_lens.training.activations_store import ActivationsStore as A\n"
         "A._iterate_filtered_activations = lambda self, skip: None", "ActivationsStore._iterate_filtered_activations(self, skip): expected parameters ('self',)"),
        # SAELens itself imports the module, so it is removed after SAELens loaded (as if it never had it)
        ("import sys, sae_lens; sys.modules['sae_lens.training.multi_sae_trainer'] = None", "cannot import sae_lens.training.multi_sae_trainer"),
    ],
    ids=["method-removed", "signature-changed", "module-moved"],
)
def test_a_saelens_without_a_private_name_fails_at_import_with_one_clear_error(break_saelens, named):
    """A SAELens that lost or changed a private name stops `import sae_lens_jsae.training` (not a
    training run, steps later) with one line naming the SAELens version, the name and the pin."""
    module = "sae_lens_jsae.saelens_private" if "sys.modules" in break_saelens else "sae_lens_jsae.training"
    code = f"{break_saelens}\nimport {module}\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("sae_lens_jsae.saelens_private.SAELensPrivateAPIError: "), out.stderr[-2000:]
    assert f"SAELens {version('sae-lens')}:" in last and named in last and "'sae-lens>=" in last, last


def test_pin_in_pyproject_is_the_one_the_error_names():
    from pathlib import Path

    import tomllib

    from sae_lens_jsae.saelens_private import SAELENS_REQUIREMENT

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if d.startswith("sae-lens")] == [SAELENS_REQUIREMENT]
    lowest = SAELENS_REQUIREMENT.split(">=")[1].split(",")[0]
    assert TESTED_SAELENS_VERSIONS[0].startswith(lowest), "the pin's lower end is a tested release"


def test_installed_saelens_is_a_tested_version():
    assert version("sae-lens") in TESTED_SAELENS_VERSIONS, "run the suite on this SAELens, then add it to TESTED_SAELENS_VERSIONS and the pin"


@pytest.fixture
def sae():
    return build_jacobian_sae(make_tiny_model("gated_silu"), 1, d_sae=48, k=6)


@torch.no_grad()
def test_weight_product_cache_reused_while_weights_are_unchanged(sae):
    first = sae._weight_products(sae.mlp)
    assert sae._weight_products(sae.mlp) is first


@torch.no_grad()
@pytest.mark.parametrize("how", ["data", "parameter", "in_place"])
def test_weight_product_cache_recomputes_after_a_weight_is_replaced(sae, how):
    first = sae._weight_products(sae.mlp)
    doubled = 2 * sae.W_dec.detach()
    if how == "data":  # same Python object, same version counter: only the memory changed
        sae.W_dec.data = doubled
    elif how == "parameter":
        sae.W_dec = torch.nn.Parameter(doubled)
    else:
        sae.W_dec.copy_(doubled)
    second = sae._weight_products(sae.mlp)
    for a, b in zip(second[0], first[0]):
        torch.testing.assert_close(a, 2 * b)
    torch.testing.assert_close(second[1], first[1])  # B does not involve W_dec
