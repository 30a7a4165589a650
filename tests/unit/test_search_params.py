"""The search parameters each index kind gets, in both Qdrant APIs (one function builds them for both stores)."""

from __future__ import annotations

import pytest
import qdrant_edge as qe
from qdrant_client import models

from rag.index.store.base import IndexOptions, search_params
from rag.settings import Settings


@pytest.mark.parametrize("api", [qe, models], ids=["qdrant-edge", "qdrant-client"])
def test_ef_by_kind_unless_set(api):
    index = IndexOptions.from_settings(Settings())
    # Over int8 at a million chunks ef 128 kept 0.979 of the exact top 10, 256 kept 0.994; float32 HNSW needs no more.
    assert search_params(api, "hnsw-int8", index, False).hnsw_ef == 256
    assert search_params(api, "hnsw", index, False).hnsw_ef == 128
    assert search_params(api, "hnsw", IndexOptions.from_settings(Settings(hnsw_ef=64)), False).hnsw_ef == 64


@pytest.mark.parametrize("api", [qe, models], ids=["qdrant-edge", "qdrant-client"])
def test_exact_int8_rescoring_and_acorn(api):
    index = IndexOptions()
    exact = search_params(api, "exact", index, True)
    assert exact.exact is True and exact.quantization.ignore is True
    int8 = search_params(api, "hnsw-int8", index, True)
    assert int8.quantization.rescore is True and int8.quantization.oversampling == index.oversampling
    assert int8.acorn is not None and search_params(api, "hnsw-int8", index, False).acorn is None
    assert search_params(api, "hnsw", IndexOptions(acorn=False), True).acorn is None
