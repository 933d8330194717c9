"""Retrieval metrics on hand-computed matrices: ranks, ties, multi-caption, v2t, the transductive Hungarian R@1."""

import numpy as np
import pytest
import torch

from prost.metrics import (TRANSDUCTIVE_LABEL, format_table, ground_truth_ranks, hungarian_r1, retrieval_metrics,
                           summarize, text_to_video, video_to_text)

# Rows are captions, columns videos; caption i belongs to video i.
S = np.array([
    [0.9, 0.1, 0.2, 0.3],  # rank 0
    [0.8, 0.5, 0.1, 0.0],  # 0.8 above the truth 0.5 -> rank 1
    [0.1, 0.7, 0.3, 0.6],  # 0.7, 0.6 above 0.3 -> rank 2
    [0.4, 0.6, 0.5, 0.2],  # three above -> rank 3
])


def test_ranks_are_zero_based_positions_in_descending_rows():
    assert ground_truth_ranks(S, [0, 1, 2, 3]).tolist() == [0, 1, 2, 3]


def test_summary_by_hand():
    m = text_to_video(S, np.arange(4))
    # ranks 0,1,2,3: R@1 = 1/4, R@5 = R@10 = 4/4, MdR = median(0,1,2,3) + 1 = 2.5, MnR = 1.5 + 1 = 2.5
    assert m["R@1"] == pytest.approx(25.0)
    assert m["R@5"] == pytest.approx(100.0) and m["R@10"] == pytest.approx(100.0)
    assert m["MdR"] == pytest.approx(2.5) and m["MnR"] == pytest.approx(2.5)
    assert m["queries"] == 4


def test_recall_at_k_boundaries():
    m = summarize(np.array([0, 4, 5, 9, 10, 20]))
    assert m["R@1"] == pytest.approx(100 / 6)
    assert m["R@5"] == pytest.approx(200 / 6)  # ranks 0 and 4 are < 5; rank 5 is not
    assert m["R@10"] == pytest.approx(400 / 6)  # 0, 4, 5, 9
    assert m["MdR"] == pytest.approx(7.0 + 1)  # median of (0,4,5,9,10,20) = 7
    assert m["MnR"] == pytest.approx(48 / 6 + 1)


def test_ties_count_in_the_query_favour():
    tied = np.array([
        [0.5, 0.5, 0.5],  # all tied: rank 0
        [0.9, 0.4, 0.4],  # one strictly above, one tied: rank 1
        [0.2, 0.2, 0.2],
    ])
    assert ground_truth_ranks(tied, [0, 1, 2]).tolist() == [0, 1, 0]
    assert text_to_video(tied, [0, 1, 2])["R@1"] == pytest.approx(200 / 3)


def test_v2t_uses_the_transpose():
    m = retrieval_metrics(S)
    # S^T rows: video 0 scores captions (0.9, 0.8, 0.1, 0.4) -> its caption 0 rank 0
    # video 1: (0.1, 0.5, 0.7, 0.6) -> caption 1 rank 2; video 2: (0.2, 0.1, 0.3, 0.5) -> rank 1
    # video 3: (0.3, 0.0, 0.6, 0.2) -> caption 3 rank 2
    assert ground_truth_ranks(S.T, np.arange(4)).tolist() == [0, 2, 1, 2]
    assert m["v2t"]["R@1"] == pytest.approx(25.0)
    assert m["v2t"]["MnR"] == pytest.approx(5 / 4 + 1)
    assert m["t2v"] == text_to_video(S, np.arange(4))


def test_multi_caption_t2v_and_v2t_take_the_best_caption():
    # 5 captions, 3 videos; captions 0,1 -> video 0, captions 2,3 -> video 1, caption 4 -> video 2
    scores = np.array([
        [0.2, 0.9, 0.1],  # caption 0 of video 0: rank 1
        [0.8, 0.3, 0.0],  # caption 1 of video 0: rank 0
        [0.1, 0.4, 0.5],  # caption 2 of video 1: rank 1
        [0.7, 0.6, 0.2],  # caption 3 of video 1: rank 1
        [0.3, 0.2, 0.6],  # caption 4 of video 2: rank 0
    ])
    owner = np.array([0, 0, 1, 1, 2])
    t2v = text_to_video(scores, owner)
    assert t2v["queries"] == 5
    assert t2v["R@1"] == pytest.approx(40.0)
    # video 0 column (0.2, 0.8, 0.1, 0.7, 0.3): best own caption 0.8 -> rank 0
    # video 1 column (0.9, 0.3, 0.4, 0.6, 0.2): best own 0.6 -> only 0.9 above -> rank 1
    # video 2 column (0.1, 0.0, 0.5, 0.2, 0.6): own 0.6 -> rank 0
    v2t = video_to_text(scores, owner)
    assert v2t["queries"] == 3
    assert v2t["R@1"] == pytest.approx(200 / 3)
    assert v2t["MnR"] == pytest.approx(1 / 3 + 1)


def test_v2t_counts_another_video_once_however_many_of_its_captions_score_higher():
    # captions 0, 1 -> video 0; caption 2 -> video 1; caption 3 -> video 2. Video 1's column: both captions of
    # video 0 (0.9, 0.8) beat its own 0.5, but video 0 is one wrong item: rank 1, not 2.
    scores = np.array([[0.7, 0.9, 0.1], [0.6, 0.8, 0.2], [0.2, 0.5, 0.3], [0.3, 0.1, 0.9]])
    v2t = video_to_text(scores, [0, 0, 1, 2])
    assert v2t["R@1"] == pytest.approx(200 / 3) and v2t["MnR"] == pytest.approx(1 / 3 + 1)


def test_nan_scores_rank_last_and_never_give_a_hit():
    scores = S.copy()
    scores[0, 0] = np.nan  # the ground truth of query 0
    assert ground_truth_ranks(scores, np.arange(4))[0] == 3
    assert text_to_video(scores, np.arange(4))["R@1"] == 0.0  # query 0 was S's only hit
    diverged = retrieval_metrics(np.full((3, 3), np.nan))
    assert diverged["t2v"]["tied"] == 3 and diverged["v2t"]["tied"] == 3  # visible, as a constant matrix is
    assert retrieval_metrics(np.full((3, 3), np.nan), ties="pessimistic")["t2v"]["R@1"] == 0.0


def test_non_square_needs_caption_video():
    with pytest.raises(ValueError, match="caption_video"):
        retrieval_metrics(np.zeros((3, 2)))


def test_accepts_torch_tensors():
    assert text_to_video(torch.tensor(S), torch.arange(4)) == text_to_video(S, np.arange(4))


def test_hungarian_is_one_to_one_and_labelled_transductive():
    # Standard t2v R@1: captions 0 and 1 both rank video 0 first -> only caption 0 hits (50%).
    # The one-to-one assignment must give video 1 to caption 1, so it scores 100%.
    scores = np.array([[0.9, 0.1], [0.8, 0.7]])
    assert text_to_video(scores, [0, 1])["R@1"] == pytest.approx(50.0)
    h = hungarian_r1(scores)
    assert h["R@1"] == pytest.approx(100.0)
    assert h["transductive"] is True and "transductive" in h["label"] and h["label"] == TRANSDUCTIVE_LABEL


def test_hungarian_with_more_captions_than_videos_counts_unassigned_as_misses():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    h = hungarian_r1(scores, [0, 0, 1])
    assert h["R@1"] == pytest.approx(200 / 3)


def test_table_lists_both_directions():
    table = format_table({"full": retrieval_metrics(S)})
    assert "t2v" in table and "v2t" in table and "25.0" in table


def test_tied_queries_are_reported_so_a_constant_matrix_is_visible():
    constant = np.zeros((3, 3))
    m = retrieval_metrics(constant)
    assert m["t2v"]["R@1"] == pytest.approx(100.0)  # the official rule: ties favour the query
    assert m["t2v"]["tied"] == 3 and m["v2t"]["tied"] == 3
    assert retrieval_metrics(S)["t2v"]["tied"] == 0


def test_v2t_ties_between_captions_of_the_same_video_do_not_count():
    scores = np.array([[0.9, 0.1], [0.9, 0.2], [0.3, 0.8]])
    assert video_to_text(scores, [0, 0, 1])["tied"] == 0


def test_pessimistic_ties_give_the_other_bound():
    constant = np.zeros((4, 4))
    m = retrieval_metrics(constant, ties="pessimistic")
    assert m["t2v"]["R@1"] == 0.0 and m["t2v"]["MdR"] == pytest.approx(4.0)  # every tied item counted above
    assert m["v2t"]["R@1"] == 0.0
    assert retrieval_metrics(S, ties="pessimistic") == retrieval_metrics(S)  # no ties: the same
    tied = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.0, 0.0, 0.3]])
    assert ground_truth_ranks(tied, [0, 1, 2]).tolist() == [0, 0, 0]
    assert text_to_video(tied, [0, 1, 2], ties="pessimistic")["R@1"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="ties"):
        text_to_video(tied, [0, 1, 2], ties="random")
