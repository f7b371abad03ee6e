"""Lesion-level, stratified, deterministic split assignment."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinspark import schema
from skinspark.config import check_fractions
from skinspark.ingest.split import assign_splits


def _lesions(sizes_by_class: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for dx, sizes in sizes_by_class.items():
        for number, images in enumerate(sizes):
            rows.append({"lesion_id": f"HAM_{dx}_{number:05d}", "dx": dx, "images": images})
    return pd.DataFrame(rows)


lesion_sets = st.dictionaries(
    st.sampled_from(schema.LABELS),
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=120),
    min_size=1,
)


@settings(max_examples=60, deadline=None)
@given(lesion_sets, st.integers(min_value=0, max_value=10_000))
def test_every_lesion_in_exactly_one_split_and_deterministic(sizes, seed):
    lesions = _lesions(sizes)
    first = assign_splits(lesions, (0.8, 0.1, 0.1), seed)
    assert sorted(first["lesion_id"]) == sorted(lesions["lesion_id"])  # each lesion once
    assert set(first["split"]) <= set(schema.SPLITS)
    shuffled = lesions.sample(frac=1.0, random_state=seed % 97)
    second = assign_splits(shuffled, (0.8, 0.1, 0.1), seed)
    assert first.set_index("lesion_id")["split"].to_dict() == second.set_index("lesion_id")["split"].to_dict()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=150, max_size=400), st.integers(0, 1000))
def test_each_class_within_two_points_of_the_fractions(sizes, seed):
    lesions = _lesions({"nv": sizes, "mel": sizes[: len(sizes) // 2]})
    assigned = lesions.merge(assign_splits(lesions, (0.8, 0.1, 0.1), seed), on="lesion_id")
    for _, group in assigned.groupby("dx"):
        total = group["images"].sum()
        shares = group.groupby("split")["images"].sum() / total
        for split, target in zip(schema.SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs(shares.get(split, 0.0) - target) <= 0.02, (split, shares.to_dict())


def test_different_seeds_give_different_assignments():
    lesions = _lesions({"nv": [1] * 300})
    one = assign_splits(lesions, (0.8, 0.1, 0.1), 1).set_index("lesion_id")["split"]
    two = assign_splits(lesions, (0.8, 0.1, 0.1), 2).set_index("lesion_id")["split"]
    assert (one.sort_index() != two.sort_index()).sum() > 10


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        check_fractions((0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="three"):
        check_fractions((0.5, 0.5))
    with pytest.raises(ValueError, match="once"):
        assign_splits(
            pd.DataFrame({"lesion_id": ["a", "a"], "dx": ["nv", "nv"], "images": [1, 1]}), (0.8, 0.1, 0.1), 0
        )


def _pairs(lesions: int, images_per_lesion: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                schema.IMAGE_ID: f"ISIC_{lesion:04d}{image}",
                schema.LESION_ID: f"HAM_{lesion:04d}",
                schema.DX: "nv",
            }
            for lesion in range(lesions)
            for image in range(images_per_lesion)
        ]
    )


def test_split_plan_by_lesion_never_divides_a_lesion_and_by_image_does():
    from skinspark.ingest import split_plan

    pairs = _pairs(lesions=200, images_per_lesion=3)
    by_lesion = split_plan(pairs, (0.8, 0.1, 0.1), seed=1)
    assert (by_lesion.groupby(schema.LESION_ID)[schema.SPLIT].nunique() == 1).all()
    by_image = split_plan(pairs, (0.8, 0.1, 0.1), seed=1, split_by="image")
    assert len(by_image) == len(pairs) and by_image[schema.SPLIT].notna().all()
    assert (by_image.groupby(schema.LESION_ID)[schema.SPLIT].nunique() > 1).any()
    assert by_image[schema.SPLIT].value_counts()["train"] == 480
    with pytest.raises(ValueError, match="split_by"):
        split_plan(pairs, (0.8, 0.1, 0.1), seed=1, split_by="patient")


def test_fold_plan_keeps_lesions_whole_and_leaves_test_and_plain_plans_alone():
    from skinspark.ingest import fold_plan, split_plan

    plan = split_plan(_pairs(lesions=200, images_per_lesion=3), (0.8, 0.1, 0.1), seed=1)
    unchanged, warnings = fold_plan(plan, 0, seed=1)
    assert unchanged is plan and warnings == [] and schema.FOLD not in plan  # no folds: no fold column
    folded, warnings = fold_plan(plan, 3, seed=1)
    assert warnings == [] and folded.drop(columns=schema.FOLD).equals(plan)
    assert folded.loc[folded[schema.SPLIT] == "test", schema.FOLD].isna().all()
    train_val = folded[folded[schema.SPLIT] != "test"]
    assert set(train_val[schema.FOLD]) == {0, 1, 2}
    assert (train_val.groupby(schema.LESION_ID)[schema.FOLD].nunique() == 1).all()
    by_image, _ = fold_plan(
        split_plan(plan.drop(columns=schema.SPLIT), (0.8, 0.1, 0.1), 1, "image"), 3, 1, "image"
    )
    train_val = by_image[by_image[schema.SPLIT] != "test"]
    assert (train_val.groupby(schema.LESION_ID)[schema.FOLD].nunique() > 1).any()  # the leaky variant
