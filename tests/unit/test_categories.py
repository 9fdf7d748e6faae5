import numpy as np

from lvisctl.data.categories import CategoryMap, CategoryStats


def test_category_map_roundtrip_sparse_ids():
    cmap = CategoryMap([1203, 5, 17])
    assert cmap.cat_ids == [5, 17, 1203]
    assert [cmap.index(c) for c in (5, 17, 1203)] == [1, 2, 3]
    assert cmap.cat_id(3) == 1203
    assert cmap.indices([17, 999]) == [2]


def test_stats_count_images_and_instances_from_annotations():
    cats = {5: {"id": 5, "name": "a", "frequency": "f"}, 9: {"id": 9, "name": "b", "frequency": "r"}}
    anns = {1: [{"category_id": 5}, {"category_id": 5}], 2: [{"category_id": 5}, {"category_id": 9}], 3: []}
    stats = CategoryStats.from_lvis(cats, anns)
    assert stats.image_count.tolist() == [2, 1]
    assert stats.instance_count.tolist() == [3, 1]
    assert stats.num_images == 3
    np.testing.assert_allclose(stats.image_frequency, [2 / 3, 1 / 3])
    assert CategoryStats.from_dict(stats.to_dict()).to_dict() == stats.to_dict()
