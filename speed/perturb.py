"""
Speed of ``inject_hardness`` and of the evaluation, each against a baseline
measured in the same run.

- Injection, per hardness type, on the digits demo dataset: ours (clone +
  perturbation + truth fields + new image files) against the bare minimum a
  user would write by hand: ``dataset.clone()`` plus, for image types, a
  loop that decodes, perturbs and saves the same number of images with PIL
  (no truth fields, no checks).
- Evaluation: :func:`evaluate_scores` (AUROC, AUPRC, P/R/F1, three
  precision@k, noise-rate error) against sklearn's ``roc_auc_score`` +
  ``average_precision_score`` alone, on N random scores.

Run::

    .venv/bin/python benchmarks/perturb.py [--rate 0.1] [--n-eval 100000]
"""

import argparse
import os
import shutil
import tempfile
import time
import uuid

os.environ.setdefault(
    "FIFTYONE_DATABASE_NAME", "hardness_bench_%s" % uuid.uuid4().hex[:6]
)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402


from fiftyone_hardness import demo  # noqa: E402
from fiftyone_hardness.benchmarking import injection as fhp  # noqa: E402
from fiftyone_hardness.benchmarking import metrics as evaluation  # noqa: E402
from fiftyone_hardness.benchmarking import perturbations  # noqa: E402


def bare_images(filepaths, kind, rate, seed, out_dir):
    """What a user writes by hand: perturb the chosen images with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = rng.choice(
        len(filepaths), int(round(rate * len(filepaths))), replace=False
    )
    faces = perturbations.lfw_images() if kind == "far_ood" else None
    for i in chosen:
        image = np.asarray(Image.open(filepaths[i]).convert("L"))
        face = faces[rng.integers(len(faces))] if faces is not None else None
        out = perturbations.perturb_image(image, kind, rng, replacement=face)
        Image.fromarray(out).save(os.path.join(out_dir, "%d.png" % i))


def timed(function, repeat=1):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--n-eval", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    dataset = demo.load_digits_dataset(
        name="bench-perturb", noise_rate=0.2, overwrite=True, persistent=False
    )
    filepaths = dataset.values("filepath")
    tmp = tempfile.mkdtemp(prefix="bench-perturb-")
    print(
        "inject_hardness on %d digits, rate %.2f (best of %d)"
        % (len(dataset), args.rate, args.repeat)
    )
    print(
        "%-14s %8s %10s %10s %7s"
        % ("type", "changed", "ours (s)", "bare (s)", "ratio")
    )
    try:
        for kind in fhp.HARDNESS_TYPES:
            kwargs = dict(
                rate=args.rate, seed=0, label_field="ground_truth_clean"
            )
            if kind in ("confidence", "instance"):
                kwargs["features_field"] = "pixels"
            if kind == "human":
                # the demo's noisy labels play a second annotator who
                # disagrees with the clean labels on 20% of the samples
                kwargs["annotator_field"] = "ground_truth"
            if kind == "atypical":
                kwargs["vector_field"] = "pixels"
            state = {}

            def ours():
                out = os.path.join(tmp, "ours-%s-%s" % (kind, uuid.uuid4()))
                clone = fhp.inject_hardness(
                    dataset,
                    kind,
                    output_dir=out,
                    name="bench-" + kind,
                    overwrite=True,
                    **kwargs,
                )
                state["changed"] = clone.info[fhp.INFO_KEY]["num_changed"]
                clone.delete()

            def bare():
                clone = dataset.clone()
                if kind in fhp.IMAGE_TYPES:
                    out = os.path.join(tmp, "bare-%s" % uuid.uuid4())
                    os.makedirs(out)
                    bare_images(filepaths, kind, args.rate, 0, out)
                clone.delete()

            t_ours = timed(ours, args.repeat)
            t_bare = timed(bare, args.repeat)
            print(
                "%-14s %8d %10.3f %10.3f %7.2f"
                % (kind, state["changed"], t_ours, t_bare, t_ours / t_bare)
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.delete()

    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    truth = rng.random(args.n_eval) < 0.1
    scores = rng.random(args.n_eval) + truth * 0.5
    flags = scores > 0.9
    t_ours = timed(
        lambda: evaluation.evaluate_scores(
            truth, scores, flags=flags, noise_rate=0.12
        ),
        args.repeat,
    )
    t_bare = timed(
        lambda: (
            roc_auc_score(truth, scores),
            average_precision_score(truth, scores),
        ),
        args.repeat,
    )
    figures = evaluation.evaluate_scores(truth, scores, flags=flags)
    print(
        "\nevaluate_scores on %d scores: %.3f s; sklearn AUROC + AUPRC "
        "alone: %.3f s; ratio %.2f (AUROC %.3f)"
        % (args.n_eval, t_ours, t_bare, t_ours / t_bare, figures["auroc"])
    )


if __name__ == "__main__":
    main()
