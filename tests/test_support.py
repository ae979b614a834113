"""photovaez.support: the labelled data's support score against brute-force neighbour distances."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from photovaez.support import fit_support, support_distance, support_from_dict, support_score, support_to_dict


def test_leave_one_out_distances_and_scores_match_brute_force():
    rng = np.random.default_rng(0)
    lab = rng.normal(size=(400, 3))
    s = fit_support(lab, k=5)
    d = np.sort(cdist(lab, lab), axis=1)[:, 5]  # column 0 is the point itself
    np.testing.assert_allclose(s.loo_quantiles, np.quantile(d, np.linspace(0, 1, 1001)), rtol=1e-6)
    q = rng.normal(size=(50, 3))
    np.testing.assert_allclose(support_distance(s, q), np.sort(cdist(q, lab), axis=1)[:, 4], rtol=1e-6)
    # the score is the fraction of labelled galaxies with a smaller leave-one-out distance
    score = support_score(s, q)
    brute = (d[None, :] < support_distance(s, q)[:, None]).mean(1)
    np.testing.assert_allclose(score, brute, atol=1.5 / 400)  # (the quantile table is interpolated; steps of 1/400)


def test_score_is_uniform_inside_and_one_outside():
    rng = np.random.default_rng(1)
    s = fit_support(rng.uniform(size=(3000, 2)), k=8)
    inside = support_score(s, rng.uniform(size=(3000, 2)))
    # new draws from the labels' distribution: scores close to U(0, 1) (KS distance small)
    ks = np.abs(np.sort(inside) - (np.arange(1, 3001) - 0.5) / 3000).max()
    assert ks < 0.08, ks
    far = support_score(s, np.array([[3.0, 3.0], [-2.0, 0.5]]))
    np.testing.assert_array_equal(far, 1.0)
    s2 = support_from_dict(support_to_dict(s))
    np.testing.assert_allclose(support_score(s2, np.array([[0.5, 0.5]])), support_score(s, np.array([[0.5, 0.5]])))


def test_subsampling_and_bad_input():
    rng = np.random.default_rng(2)
    s = fit_support(rng.normal(size=(500, 4)), k=3, max_rows=100)
    assert s.x.shape == (100, 4) and s.k == 3
    with pytest.raises(ValueError, match="at least 2"):
        fit_support(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        support_distance(s, np.zeros((3, 5)))
