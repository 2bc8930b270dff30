import pytest

from backdoor_sae.config import DataConfig, stage_config
from backdoor_sae.data.dataset import generate


@pytest.fixture(scope="session")
def smoke_cfg() -> DataConfig:
    return stage_config(DataConfig, "smoke")


@pytest.fixture(scope="session")
def smoke_splits(smoke_cfg):
    return generate(smoke_cfg)
