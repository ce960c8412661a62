"""The run config: pyproject's table round-trips, bad values name the key."""

import pytest

from common.commands import default_config
from common.config import ConfigError, RunConfig


def test_pyproject_run_config_round_trips_through_the_typed_config():
    config = default_config()
    assert RunConfig.from_flat(config.to_flat()) == config
    assert "ingest-image-size" not in config.to_flat()  # the preset decides it


@pytest.mark.parametrize(
    ("flat", "names"),
    [
        ({"no-such-key": 1}, "no-such-key"),
        ({"ingest-slice-policy": "some"}, "slice-policy"),
        ({"ingest-image-size": 128}, "ingest-image-size"),
        ({"local-epochs": "3"}, "local-epochs"),
        ({"encoder-mode": "half"}, "encoder-mode"),
        ({"patient-score": "mode"}, "patient-score"),
        ({"secure-aggregation": "secagg"}, "secure-aggregation"),
        ({"secure-aggregation": ""}, "secure-aggregation"),
    ],
)
def test_bad_values_raise_a_config_error_naming_the_key(flat, names):
    with pytest.raises(ConfigError, match=names):
        RunConfig.from_flat(flat)


def test_ingest_keys_reach_the_ingest_config():
    config = RunConfig.from_flat(
        {"ingest-intensity": "lung-window", "ingest-slice-policy": "lung"}
    )
    assert config.ingest.intensity == "lung-window"
    assert config.ingest.slice_policy == "lung"


def test_patient_score_is_configurable():
    import numpy as np

    from common.evaluation.roc_stats import patient_scores

    scores = np.array([0.1, 0.2, 0.9, 0.4, 0.5])
    patient, labels = np.array([0, 0, 0, 1, 1]), np.array([1, 1, 1, 0, 0])
    for how, first in (("mean", 0.4), ("median", 0.2), ("max", 0.9)):
        got, y = patient_scores(scores, patient, labels, how)
        assert got[0] == pytest.approx(first) and list(y) == [1, 0]
    assert RunConfig.from_flat({"patient-score": "max"}).patient_score == "max"


def test_secure_aggregation_is_secagg_plus_unless_ours_is_chosen():
    from server.checkpointing import stable_config

    assert default_config().secure_aggregation == "secaggplus"
    ours = RunConfig.from_flat({"secure-aggregation": "fedbigbigan"})
    assert ours.secure_aggregation == "fedbigbigan"
    assert ours.to_flat()["secure-aggregation"] == "fedbigbigan"
    # a checkpoint written before the switch existed (SecAgg+) still resumes
    assert "secure-aggregation" not in stable_config(RunConfig())
    assert stable_config(ours)["secure-aggregation"] == "fedbigbigan"
