"""DynamoDB tables as the data layer declares them: read from the PynamoDB models, never restated.

Every model an AWS deployment uses (`udagram.data.models_for`: not the built-in sign-in's, since on
AWS users sign in at an external OpenID provider) becomes one table with the model's hash/range key, its global
and local secondary indexes (keys and projection) and its TTL attribute, if it declares one. The
settings field naming each table is found through `udagram.data.configure` itself, the one place
that maps models to settings, so a new model with a new `*_table` setting needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynamodb.attributes import Attribute, TTLAttribute
from pynamodb.indexes import GlobalSecondaryIndex, Index, LocalSecondaryIndex
from pynamodb.models import Model

from udagram import data
from udagram.settings import Settings


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # DynamoDB attribute type: "S", "N" or "B"


@dataclass(frozen=True)
class IndexSpec:
    name: str
    hash_key: Key
    range_key: Key | None
    projection: str  # ALL, KEYS_ONLY or INCLUDE
    non_key_attributes: tuple[str, ...]
    local: bool


@dataclass(frozen=True)
class TableSpec:
    model: type[Model]
    settings_field: str  # e.g. "images_table": UDAGRAM_IMAGES_TABLE names the table
    hash_key: Key
    range_key: Key | None
    indexes: tuple[IndexSpec, ...]
    ttl_attribute: str | None


def _keys(attributes: dict[str, Attribute]) -> tuple[Key, Key | None]:
    hash_key = next(Key(a.attr_name, a.attr_type) for a in attributes.values() if a.is_hash_key)
    range_key = next((Key(a.attr_name, a.attr_type) for a in attributes.values() if a.is_range_key), None)
    return hash_key, range_key


def _index(index: Index) -> IndexSpec:
    hash_key, range_key = _keys(index.Meta.attributes)
    projection = index.Meta.projection
    return IndexSpec(
        name=index.Meta.index_name,
        hash_key=hash_key,
        range_key=range_key,
        projection=projection.projection_type,
        non_key_attributes=tuple(projection.non_key_attributes or ()),
        local=isinstance(index, LocalSecondaryIndex),
    )


def table_settings_fields() -> dict[type[Model], str]:
    """Which settings field names each model's table, as `data.configure` assigns them.

    `configure` is run with every `*_table` field set to its own field name, so each model's
    table name afterwards is the field that feeds it; the models are then pointed back at the
    default names. (Run in the synth process only: it reconfigures the models.)
    """
    defaults = Settings.model_construct()
    fields = [name for name in Settings.model_fields if name.endswith("_table")]
    data.configure(defaults.model_copy(update={name: name for name in fields}))
    found = {model: model.Meta.table_name for model in data.MODELS}
    data.configure(defaults)
    unmapped = [m.__name__ for m, name in found.items() if name not in fields]
    if unmapped:
        raise ValueError(f"no UDAGRAM_*_TABLE setting names the table of {', '.join(unmapped)}")
    return found


def table_spec(model: type[Model], settings_field: str) -> TableSpec:
    """The table a model declares: keys, secondary indexes (keys, projection) and TTL attribute."""
    hash_key, range_key = _keys(model.get_attributes())
    indexes = tuple(
        _index(value) for name in dir(model)
        if isinstance(value := getattr(model, name), (GlobalSecondaryIndex, LocalSecondaryIndex))
    )
    ttl = next((a.attr_name for a in model.get_attributes().values() if isinstance(a, TTLAttribute)), None)
    return TableSpec(model, settings_field, hash_key, range_key, indexes, ttl)


def table_specs() -> list[TableSpec]:
    fields = table_settings_fields()
    return [table_spec(model, fields[model]) for model in aws_models()]


def aws_models() -> tuple[type[Model], ...]:
    return data.models_for(Settings.model_construct(mode="aws"))
