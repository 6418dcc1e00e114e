"""
CINCER counter-examples: the last-layer gradients and Fisher kernel are
checked against direct computations, and on the digits demo (20% symmetric
noise) the top counter-examples of correctly labelled suspicious samples are
measured against random candidates with the same observed label. The same
measurement settles the sign of the kernel.
"""

import re

import numpy as np
import pytest
import threadpoolctl

from fiftyone_hardness.dataset_io import review
from fiftyone_hardness.methods import counterexamples as ce
from fiftyone_hardness.methods.base import HardnessError


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # small dense problems: BLAS threads only contend on a busy 2-core box
    with threadpoolctl.threadpool_limits(1):
        yield


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    N, P, K = 6, 4, 3
    inputs = rng.normal(size=(N, P))
    W = rng.normal(size=(K, P))
    labels = rng.integers(0, K, N)
    probs = ce.softmax(inputs @ W.T)
    G = ce.last_layer_gradients(inputs, probs, labels)
    eps = 1e-6
    for n in range(N):
        numeric = np.zeros(K * P)
        for j in range(K * P):
            dW = np.zeros(K * P)
            dW[j] = eps
            Wp, Wm = W + dW.reshape(K, P), W - dW.reshape(K, P)
            lp = np.log(ce.softmax(inputs[[n]] @ Wp.T)[0, labels[n]])
            lm = np.log(ce.softmax(inputs[[n]] @ Wm.T)[0, labels[n]])
            numeric[j] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(G[n], numeric, atol=1e-6)


def test_fisher_kernel_is_the_pseudo_inverse_kernel():
    rng = np.random.default_rng(1)
    N, P, K, m = 40, 5, 4, 12
    inputs = np.hstack([rng.normal(size=(N, P - 1)), np.ones((N, 1))])
    probs = ce.softmax(rng.normal(size=(N, K)))
    labels = rng.integers(0, K, N)
    subset = ce.fisher_subset(N, m, seed=0)
    kernel = ce.FisherKernel(inputs[subset], probs[subset], labels[subset])
    G = ce.last_layer_gradients(inputs, probs, labels)
    Gm = G[subset]
    F = Gm.T @ Gm / m
    F_pinv = np.linalg.pinv(F, rcond=1e-10)
    np.testing.assert_allclose(
        kernel.matrix(), F_pinv, atol=1e-6 * np.abs(F_pinv).max()
    )
    phi = kernel.embed(inputs, probs, labels)
    np.testing.assert_allclose(
        phi @ phi.T,
        G @ F_pinv @ G.T,
        rtol=1e-6,
        atol=1e-8 * np.abs(G @ F_pinv @ G.T).max(),
    )
    assert kernel.rank == m


def _measure(X, noisy, mislabeled, clean, fisher_seeds=(0, 1, 2), m=100):
    """CINCER's precision@k on correctly labelled suspicious samples, for
    both kernel signs, averaged over Fisher subsets."""
    probe = ce.SoftmaxProbe(X, noisy, 10)
    inputs, probs = probe.inputs(X), probe.predict_proba(X)
    pred = probs.argmax(1)
    suspicious = np.flatnonzero((pred != noisy) & ~mislabeled)
    candidates = {
        i: ce.counterexample_candidates(noisy, i, pred[i]) for i in suspicious
    }
    figures = {"num_suspicious": len(suspicious)}
    figures["base"] = np.mean(
        [mislabeled[c].mean() for c in candidates.values()]
    )
    figures["base_true"] = np.mean(
        [(clean[c] == noisy[i]).mean() for i, c in candidates.items()]
    )
    for sign in (-1, 1):
        p1, p5, t5 = [], [], []
        for seed in fisher_seeds:
            subset = ce.fisher_subset(len(X), m, seed)
            kernel = ce.FisherKernel(
                inputs[subset], probs[subset], noisy[subset]
            )
            phi = kernel.embed(inputs, probs, noisy)
            for i, c in candidates.items():
                top = c[np.argsort(-sign * (phi[c] @ phi[i]), kind="stable")]
                p1.append(mislabeled[top[0]])
                p5.append(mislabeled[top[:5]].mean())
                t5.append((clean[top[:5]] == noisy[i]).mean())
        figures[sign] = (np.mean(p1), np.mean(p5), np.mean(t5))
    return figures, probe, probs, pred, suspicious, candidates


def test_counterexamples_of_clean_suspicious_samples_are_mislabeled(
    digits_dataset,
):
    X = np.stack(digits_dataset.values("pixels")).astype(np.float64)
    classes = [str(i) for i in range(10)]
    noisy = np.array(
        [classes.index(c) for c in digits_dataset.values("ground_truth.label")]
    )
    clean = np.array(
        [
            classes.index(c)
            for c in digits_dataset.values("ground_truth_clean.label")
        ]
    )
    mislabeled = np.asarray(digits_dataset.values("mislabeled"), dtype=bool)

    figures, probe, probs, pred, suspicious, candidates = _measure(
        X, noisy, mislabeled, clean
    )
    chosen, other = figures[int(ce.KERNEL_SIGN)], figures[-int(ce.KERNEL_SIGN)]
    print(
        "\nCINCER on digits (pixels, 20%% symmetric noise, m=100, 3 Fisher "
        "subsets): %d correctly labelled suspicious samples\n"
        "  base rate (random candidate with the same observed label is "
        "mislabeled): %.3f\n"
        "  sign %+d (chosen): precision@1 %.3f  precision@5 %.3f  "
        "top-5 truly of the sample's class %.3f (base %.3f)\n"
        "  sign %+d (other):  precision@1 %.3f  precision@5 %.3f  "
        "top-5 truly of the sample's class %.3f"
        % (
            figures["num_suspicious"],
            figures["base"],
            ce.KERNEL_SIGN,
            chosen[0],
            chosen[1],
            chosen[2],
            figures["base_true"],
            -ce.KERNEL_SIGN,
            other[0],
            other[1],
            other[2],
        )
    )
    assert figures["num_suspicious"] >= 20
    assert chosen[0] >= 2 * figures["base"]
    assert chosen[1] >= 2 * figures["base"]
    # the sign: only the chosen one finds candidates that are truly of the
    # suspicious sample's class, i.e. the ones explaining its prediction
    assert chosen[2] >= 2 * other[2]
    assert chosen[2] >= 5 * figures["base_true"]

    # The sign by intervention: give the top counter-example its true label
    # and refit; the model's support for the (correct) label of the
    # suspicious sample should rise more than for the other sign's pick or
    # a random candidate
    subset = ce.fisher_subset(len(X), 100, 0)
    inputs = probe.inputs(X)
    kernel = ce.FisherKernel(inputs[subset], probs[subset], noisy[subset])
    phi = kernel.embed(inputs, probs, noisy)
    rng = np.random.default_rng(0)
    gains = {"chosen": [], "other": [], "random": []}
    for i in suspicious[:30]:
        c = candidates[i]
        kern = ce.KERNEL_SIGN * (phi[c] @ phi[i])
        picks = {
            "chosen": c[np.argmax(kern)],
            "other": c[np.argmin(kern)],
            "random": rng.choice(c),
        }
        for name, k in picks.items():
            relabeled = noisy.copy()
            relabeled[k] = clean[k]
            refit = ce.SoftmaxProbe(X, relabeled, 10).predict_proba(X[[i]])
            gains[name].append(
                np.log(refit[0, noisy[i]]) - np.log(probs[i, noisy[i]])
            )
    means = {name: float(np.mean(v)) for name, v in gains.items()}
    print(
        "  fixing the top counter-example's label, mean gain in log P("
        "label) of the suspicious sample: chosen %.4f, other sign %.4f, "
        "random %.4f" % (means["chosen"], means["other"], means["random"])
    )
    assert means["chosen"] > means["other"]
    assert means["chosen"] > means["random"]


def test_find_counterexamples_on_a_dataset(digits):
    X = np.stack(digits.values("pixels"))
    labels = digits.values("ground_truth.label")
    probe = ce.SoftmaxProbe(X, np.array([int(c) for c in labels]), 10)
    pred = probe.predict_proba(X).argmax(1)
    ids = digits.values("id")
    mislabeled = digits.values("mislabeled")
    i = next(
        j
        for j in range(len(ids))
        if str(pred[j]) != labels[j] and not mislabeled[j]
    )
    result = review.find_counterexamples(
        digits, ids[i], embeddings_field="pixels", k=5
    )
    assert result["label"] == labels[i]
    assert result["predicted"] == result["target_label"] == str(pred[i])
    assert len(result["counterexample_ids"]) == 5
    assert result["scores"] == sorted(result["scores"], reverse=True)
    view = result["view"]
    assert view.values("id") == [ids[i]] + result["counterexample_ids"]
    assert set(view.skip(1).values("ground_truth.label")) == {str(pred[i])}

    other = review.find_counterexamples(
        digits,
        ids[i],
        embeddings_field="pixels",
        k=3,
        target_label="0" if labels[i] != "0" else "1",
    )
    assert len(other["counterexample_ids"]) == 3
    with pytest.raises(HardnessError, match="Unknown class"):
        review.find_counterexamples(
            digits, ids[i], embeddings_field="pixels", target_label="cat"
        )
    with pytest.raises(HardnessError, match="not a labelled sample"):
        review.find_counterexamples(
            digits[:10], ids[-1], embeddings_field="pixels"
        )


def _suspicious_sample(dataset):
    """A correctly labelled sample the probe disagrees with."""
    X = np.stack(dataset.values("pixels"))
    labels = dataset.values("ground_truth.label")
    probe = ce.SoftmaxProbe(X, np.array([int(c) for c in labels]), 10)
    pred = probe.predict_proba(X).argmax(1)
    ids = dataset.values("id")
    mislabeled = dataset.values("mislabeled")
    return next(
        ids[j]
        for j in range(len(ids))
        if str(pred[j]) != labels[j] and not mislabeled[j]
    )


def test_operator_matches_the_python_api(plugins_dir, digits_dataset):
    import fiftyone.operators as foo

    import fiftyone_hardness as foh

    sample_id = _suspicious_sample(digits_dataset)
    result = foo.execute_operator(
        "@fiftyone-hardness/hardness/find_counterexamples",
        dict(
            dataset=digits_dataset,
            current_sample=sample_id,
            params=dict(
                label_field="ground_truth", embeddings_field="pixels", k=3
            ),
        ),
    )
    assert result.error is None, result.error
    shown = result.result
    expected = foh.find_counterexamples(
        digits_dataset, sample_id, embeddings_field="pixels", k=3
    )
    assert [c["id"] for c in shown["counterexamples"]] == (
        expected["counterexample_ids"]
    )
    assert shown["target_label"] == expected["target_label"]


#: invalid counter-example parameters: ``(kwargs, what Python says, what
#: the App says)``
INVALID_COUNTEREXAMPLES = [
    (dict(k=0), "Invalid k=0", None),
    (dict(k=101), "Invalid k=101", None),
    (dict(k=2.5), "Invalid k=2.5", None),
    (dict(target_label="cat"), "Unknown class 'cat'", None),
    (dict(embeddings_field=""), "Invalid embeddings_field=''", "enum"),
    (dict(embeddings_field="nope"), "no field 'nope'", "Invalid enum"),
    (dict(kk=3), "Unknown parameter kk.*valid parameters", None),
    # not in the form: the App accepts and refuses it as Python does
    (dict(fisher_size=1), "Invalid fisher_size=1", None),
]


@pytest.mark.parametrize(
    "kwargs,python_says,app_says",
    INVALID_COUNTEREXAMPLES,
    ids=[repr(c[0]) for c in INVALID_COUNTEREXAMPLES],
)
def test_invalid_values_are_refused_by_python_and_the_app(
    plugins_dir, digits_dataset, kwargs, python_says, app_says
):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    import fiftyone_hardness as foh

    sample_id = digits_dataset.first().id
    kwargs = dict({"embeddings_field": "pixels"}, **kwargs)
    # the new API and the old keyword API of the review module
    with pytest.raises(HardnessError, match=python_says):
        foh.find_counterexamples(digits_dataset, sample_id, **kwargs)
    with pytest.raises(HardnessError, match=python_says):
        review.find_counterexamples(digits_dataset, sample_id, **kwargs)
    # FiftyOne refuses to execute a form with an invalid property
    with pytest.raises(ExecutionError, match="Validation error") as refused:
        foo.execute_operator(
            "@fiftyone-hardness/hardness/find_counterexamples",
            dict(
                dataset=digits_dataset,
                current_sample=sample_id,
                params=dict(kwargs, label_field="ground_truth"),
            ),
        )
    assert re.search(app_says or python_says, str(refused.value))


def test_candidates_are_scored_in_batches_as_over_all_rows():
    """Issue 14: only the queried row, the Fisher subset and the candidates
    (in batches) get last-layer inputs; the scores are those computed from
    every row's inputs at once."""
    rng = np.random.default_rng(7)
    means = rng.normal(size=(3, 20)) * 2
    y = rng.integers(3, size=500)
    X = (means[y] + rng.normal(size=(500, 20))).astype(np.float32)
    probe = ce.SoftmaxProbe(X, y, 3)
    inputs, probs = probe.inputs(X), probe.predict_proba(X)
    subset = ce.fisher_subset(len(X), 50, 0)
    kernel = ce.FisherKernel(inputs[subset], probs[subset], y[subset])
    phi = kernel.embed(inputs, probs, y)
    index = int(np.flatnonzero(y == 0)[0])
    candidates = ce.counterexample_candidates(y, index, 1)
    expected = ce.KERNEL_SIGN * (phi[candidates] @ phi[index])
    got = ce.incompatibility(
        kernel, probe, X, y, index, candidates, batch_size=7
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    found = ce.rank_counterexamples(
        X, y, 3, index, target=1, k=5, fisher_size=50, probe=probe
    )
    top = candidates[np.argsort(-expected, kind="stable")[:5]]
    assert found["indices"] == top.tolist()
    assert found["probability"] == pytest.approx(probs[index, 0])
