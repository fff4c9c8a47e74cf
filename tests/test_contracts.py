"""The plugin contract kit (tributary_core.testing) on every built-in semantic type and loss
head, and proof that it catches broken plugins."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from tributary_core import get_registry
from tributary_core.semantic_type import ColumnEncoder, EncodedColumn
from tributary_core.testing import check_loss_head, check_semantic_type

T = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
SAMPLES = {
    "identifier": pa.array(["a", None, "c", "d"]),
    "numerical": pa.array([1.5, None, -2.0, 3.0]),
    "timestamp": pa.array([T, None, T + dt.timedelta(days=40), T - dt.timedelta(hours=5)],
                          pa.timestamp("us", tz="UTC")),
    "boolean": pa.array([True, None, False, True]),
    "categorical": pa.array(["x", "y", None, "x"]),
    "text": pa.array(["hello world", None, "goodbye", "hello world"]),
    "ignored": pa.array([1, 2, None, 4]),
}


def test_every_builtin_type_has_a_sample():
    builtin = {n for n, c in get_registry().semantic_types.items()
               if c.__module__.startswith("tributary_plugins")}
    assert builtin == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_builtin_semantic_type_contract(name):
    check_semantic_type(get_registry().semantic_type(name), SAMPLES[name])


def _pairs():
    registry = get_registry()
    return sorted({(loss, name) for name, cls in registry.semantic_types.items()
                   for loss in cls.target_losses} | {("null", "boolean")})


@pytest.mark.parametrize(("loss_name", "stype"), _pairs())
def test_loss_head_contract(loss_name, stype):
    check_loss_head(get_registry().loss_head(loss_name), stype)


def test_the_kit_catches_broken_plugins():
    numerical = type(get_registry().semantic_type("numerical"))

    class Mutating(numerical):
        name = "mutating"

        def encode(self, prepared, stats, vocab_ids=None):
            prepared.values[:] = 0.0  # a bug: the input is changed in place
            return super().encode(prepared, stats, vocab_ids)

    with pytest.raises(AssertionError, match="encode\\(\\) changed the prepared values"):
        check_semantic_type(Mutating(), SAMPLES["numerical"])

    class Random(numerical):
        name = "random"

        def encode(self, prepared, stats, vocab_ids=None):
            return EncodedColumn({"value": np.random.rand(len(prepared)).astype(np.float32)}, prepared.valid)

    with pytest.raises(AssertionError, match="encode\\(\\) is not deterministic"):
        check_semantic_type(Random(), SAMPLES["numerical"])

    class NanStats(numerical):
        name = "nanstats"

        def fit(self, prepared, *, rows=None):
            return {"mean": float("nan"), "std": 1.0}

    with pytest.raises(AssertionError, match="not strict JSON"):
        check_semantic_type(NanStats(), SAMPLES["numerical"])

    class LastBatchStats(numerical):
        name = "lastbatch"

        def column_encoder(self, column_name):
            whole = self

            class Encoder(ColumnEncoder):
                def fit(self, prepared, rows):
                    super().fit(prepared, rows)
                    self.last = whole.fit(prepared, rows=rows)

                def stats(self):
                    return self.last  # a bug: the last batch's statistics, not the column's

                def encode(self, prepared, stats, vocab):
                    return whole.encode(prepared, stats)

            return Encoder()

    with pytest.raises(AssertionError, match="column_encoder\\(\\) in batches of 1 gave the "
                                             "statistics"):
        check_semantic_type(LastBatchStats(), SAMPLES["numerical"])

    categorical = type(get_registry().semantic_type("categorical"))

    class BatchLocalIds(categorical):
        name = "batchlocal"

        def column_encoder(self, column_name):
            column_encoder = super().column_encoder(column_name)

            class Encoder(ColumnEncoder):
                one_pass = True

                def fit(self, prepared, rows):
                    column_encoder.fit(prepared, rows)

                def stats(self):
                    return column_encoder.stats()

                def encode(self, prepared, stats, vocab):  # a bug: the batch's own value codes
                    index = prepared.values.astype(np.uint32)
                    return EncodedColumn({"index": index}, prepared.valid.copy())

            return Encoder()

    with pytest.raises(AssertionError, match="column_encoder\\(\\) in batches of 1 built another "
                                             "vocabulary"):
        check_semantic_type(BatchLocalIds(), SAMPLES["categorical"])

    class WarnsInOnePass(categorical):
        name = "warnsinonepass"

        def check_encoded(self, prepared, stats, encoded):
            return "never seen in one pass"

    with pytest.raises(AssertionError, match="one-pass column_encoder\\(\\) encodes before the "
                                             "statistics exist"):
        check_semantic_type(WarnsInOnePass(), SAMPLES["categorical"])

    huber = type(get_registry().loss_head("huber"))

    class Exploding(huber):
        name = "exploding"

        def loss(self, prediction, target):
            return (prediction - target).pow(2).mean() / 0.0

    with pytest.raises(AssertionError, match="loss is not finite"):
        check_loss_head(Exploding(), "numerical")

    class Unnamed(huber):
        name = "unnamed"
        higher_is_better = {"mae": False}

    with pytest.raises(AssertionError, match="higher_is_better lacks \\['r2'\\]"):
        check_loss_head(Unnamed(), "numerical")


# -- the interface methods that replace branches on built-in names (issue 15) ----------------


def test_label_values_of_builtin_types():
    registry = get_registry()
    boolean = registry.semantic_type("boolean").label_values(
        [True, False, " Yes", "no", "N", "f", "0", "TRUE", 1, 0, 0.0, "maybe", 2, None])
    assert boolean.tolist()[:11] == [1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0]
    assert np.isnan(boolean[11:]).all()

    day = dt.date(2024, 5, 1)
    times = registry.semantic_type("timestamp").label_values(
        [T, T.replace(tzinfo=None), day, "2024-05-01T02:00:00+02:00", "not a time", 5, None])
    us = int(T.timestamp()) * 1_000_000
    assert times[:4].tolist() == [us, us, us, us]
    assert np.isnan(times[4:]).all()

    codes = registry.semantic_type("categorical").label_values(["b", "a", None, "b", 3])
    assert codes[[0, 1, 3, 4]].tolist() == [2.0, 1.0, 2.0, 0.0] and np.isnan(codes[2])
    present = registry.semantic_type("identifier").label_values(["k1", None, 7])
    assert present[[0, 2]].tolist() == [1.0, 1.0] and np.isnan(present[1])
    numbers = registry.semantic_type("numerical").label_values([1, 2.5, "3.5", True, float("inf"), "x", None])
    assert numbers[:4].tolist() == [1.0, 2.5, 3.5, 1.0] and np.isnan(numbers[4:]).all()


def test_decode_prediction_of_builtin_types():
    registry = get_registry()
    numbers = registry.semantic_type("numerical").decode_prediction(np.array([0.0, 2.0]),
                                                                    {"mean": 10.0, "std": 0.5})
    assert numbers.to_pylist() == [10.0, 11.0]
    stats = {"mean": 0.0, "m2": 0.0, "count": 1,
             "database": {"mean": T.timestamp() * 1e6, "std": 86_400e6}}  # one day per unit
    times = registry.semantic_type("timestamp").decode_prediction(np.array([0.0, 1.0]), stats)
    assert times.to_pylist() == ["2024-05-01 00:00:00", "2024-05-02 00:00:00"]


def test_heads_turn_predictions_into_user_units():
    import torch

    registry = get_registry()
    infonce = registry.loss_head("infonce")
    categorical = registry.semantic_type("categorical")
    scores = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    shown = infonce.to_user_units(infonce.decode(scores), categorical, {}, ["red", "green", "blue"])
    assert shown.to_pylist() == ["green", "red"]
    with pytest.raises(ValueError, match="needs the categories"):
        infonce.to_user_units(np.array([0]), categorical, {}, None)
    bce = registry.loss_head("bce")
    assert bce.to_user_units(bce.decode(torch.tensor([0.0])), registry.semantic_type("boolean"), {},
                             None).to_pylist() == [0.5]
    huber = registry.loss_head("huber")  # the default: the target type decodes its stored value
    shown = huber.to_user_units(huber.decode(torch.tensor([[1.0]])), registry.semantic_type("numerical"),
                                {"mean": 3.0, "std": 2.0}, None)
    assert shown.to_pylist() == [5.0]


def test_tabular_declarations_of_builtin_heads():
    import torch

    from tributary_core.semantic_type import TIMESTAMP_WIDTH

    registry = get_registry()
    objectives = {name: registry.loss_head(name).tabular_objective
                  for name in ("bce", "infonce", "huber", "null")}
    assert objectives == {"bce": "binary", "infonce": "multiclass", "huber": "huber", "null": None}
    infonce = registry.loss_head("infonce")
    labels = infonce.tabular_label(torch.tensor([2, -1, 0]))
    assert labels[[0, 2]].tolist() == [2.0, 0.0] and np.isnan(labels[1])  # -1: not a candidate
    huber = registry.loss_head("huber")
    target = torch.arange(2 * TIMESTAMP_WIDTH, dtype=torch.float32).reshape(2, TIMESTAMP_WIDTH)
    assert huber.tabular_label(target).tolist() == [TIMESTAMP_WIDTH - 1.0, 2 * TIMESTAMP_WIDTH - 1.0]
    pred = huber.tabular_prediction(np.array([0.5, -0.5]), target)
    assert tuple(pred.shape) == (2, TIMESTAMP_WIDTH) and pred[:, -1].tolist() == [0.5, -0.5]


def test_one_home_for_slot_widths():
    from tributary_plugins.semantic_types.timestamp import N_FEATURES

    from tributary_core.nn import encoders
    from tributary_core.sampler import kernel
    from tributary_core.semantic_type import SLOT_WIDTH, TIMESTAMP_WIDTH

    assert encoders.SLOT_WIDTH is SLOT_WIDTH and SLOT_WIDTH["timestamp"] == TIMESTAMP_WIDTH
    assert N_FEATURES == kernel.N_TS == TIMESTAMP_WIDTH
    registry = get_registry()
    widths = {n: registry.semantic_type(n).target_width for n in ("numerical", "timestamp", "boolean")}
    assert widths == {"numerical": 1, "timestamp": TIMESTAMP_WIDTH, "boolean": 1}
    huber = registry.loss_head("huber")
    assert huber.build_head(16, 8, "timestamp").out.out_features == TIMESTAMP_WIDTH
    assert huber.build_head(16, 8, "numerical").out.out_features == 1


EVENT_TIMES_SOURCE = """
    from tributary_core import hookimpl
    from tributary_plugins.semantic_types.timestamp import Timestamp

    class EventTime(Timestamp):
        name = "event_time"
        description = "a third-party type in the timestamp slot, trained by huber"

    @hookimpl
    def tributary_semantic_types():
        return [EventTime]
"""


def test_builtin_head_serves_a_third_party_type(tmp_path, monkeypatch):
    """huber knows a plugin's timestamp-slot type by its slot and width, not by its name."""
    import sys
    import textwrap

    import torch

    from tributary_core.registry import reset_registry
    from tributary_core.semantic_type import TIMESTAMP_WIDTH

    root = tmp_path / "site"
    (root / "event_times_fake").mkdir(parents=True)
    (root / "event_times_fake" / "__init__.py").write_text(textwrap.dedent(EVENT_TIMES_SOURCE))
    info = root / "event_times-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: event-times\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tributary.semantic_types]\nevents = event_times_fake\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "event_times_fake", raising=False)
    reset_registry()
    registry = get_registry()
    assert "event_time" in registry.semantic_types
    huber = registry.loss_head("huber")
    check_loss_head(huber, "event_time")
    assert huber.build_head(16, 8, "event_time").out.out_features == TIMESTAMP_WIDTH
    batch = {"target_stype": "event_time", "target_timestamp": torch.zeros(3, TIMESTAMP_WIDTH),
             "target_number": torch.ones(3)}
    assert tuple(huber.target(batch).shape) == (3, TIMESTAMP_WIDTH)
    stats = {"database": {"mean": T.timestamp() * 1e6, "std": 1e6}}
    shown = huber.to_user_units(np.array([0.0]), registry.semantic_type("event_time"), stats, None)
    assert shown.to_pylist() == ["2024-05-01 00:00:00"]


def test_the_kit_checks_the_new_methods():
    registry = get_registry()
    numerical = type(registry.semantic_type("numerical"))

    class ListLabels(numerical):
        name = "list_labels"

        def label_values(self, values):
            return [0.0 for _ in values]

    with pytest.raises(AssertionError, match="label_values\\(\\) must return a float array"):
        check_semantic_type(ListLabels(), SAMPLES["numerical"])

    class ZeroForNull(numerical):
        name = "zero_for_null"

        def label_values(self, values):
            return np.array([0.0 if v is None else float(v) for v in values])

    with pytest.raises(AssertionError, match="must give NaN for None"):
        check_semantic_type(ZeroForNull(), SAMPLES["numerical"])

    class ShortPrediction(numerical):
        name = "short_prediction"

        def decode_prediction(self, values, stats):
            return pa.array(np.asarray(values)[:1])

    with pytest.raises(AssertionError, match="decode_prediction\\(\\) gave 1 values for 3"):
        check_semantic_type(ShortPrediction(), SAMPLES["numerical"])

    huber = type(registry.loss_head("huber"))

    class Misnamed(huber):
        name = "misnamed"
        tabular_objective = ""

    with pytest.raises(AssertionError, match="tabular_objective must be None or a LightGBM objective"):
        check_loss_head(Misnamed(), "numerical")

    class FlatLabels(huber):
        name = "flat_labels"

        def tabular_label(self, target):
            return target.numpy()  # (N, 1): not 1-d

    with pytest.raises(AssertionError, match="tabular_label\\(\\) must return a 1-d float array"):
        check_loss_head(FlatLabels(), "numerical")

    class Unshown(huber):
        name = "unshown"

        def to_user_units(self, decoded, target_type, stats, candidate_values):
            return list(decoded)

    with pytest.raises(AssertionError, match="to_user_units\\(\\) must return an Arrow array"):
        check_loss_head(Unshown(), "numerical")


def test_draft_reads_the_yes_no_words_of_the_boolean_type(tmp_path):
    """The draft proposes ``boolean`` for exactly the strings the boolean type reads."""
    import pyarrow.parquet as pq

    from tributary_core.draft.heuristics import profile_tables, read_tables
    from tributary_core.sql import sandbox_connection

    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"a": [" Yes", "NO", " Yes"], "b": ["T", "f", None], "c": ["1", "0", "1"],
                             "d": ["yes", "maybe", "no"]}), raw / "t.parquet")
    tables = read_tables(raw)
    con = sandbox_connection(tables)
    try:
        columns = profile_tables(con, tables)["t"].columns
    finally:
        con.close()
    yes_no = {name: col.yes_no for name, col in columns.items()}
    assert yes_no == {"a": True, "b": True, "c": True, "d": False}
    boolean = get_registry().semantic_type("boolean")
    assert boolean.check_column(pa.chunked_array([[" Yes", "NO", "T", "f", "1", "0"]])) is None
