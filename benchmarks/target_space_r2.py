"""How much of the demo generator's drive a linear map from the target space explains.

The demo cohort promises that a ridge from the target embeddings to the features that
drive the simulated responses explains less than half their variance (R^2 < 0.5), so a
decoder has to learn a mapping. This measures it on a simulated store that holds targets:

    .venv/bin/neurodec simulate --out demo.zarr
    .venv/bin/neurodec embed demo.zarr --extractor image_pretrained_cnn --key efficientnet-lite0
    .venv/bin/python benchmarks/target_space_r2.py demo.zarr --targets efficientnet-lite0

The ridge (alpha by cross-validation over logspace(-2, 6)) is fitted on the training
stimuli and scored on the held-out test stimuli, over the standardised driving features.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> float:
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    import neurodec
    from neurodec.simulate.features import generator_features, image_features, standardise

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="a simulated demo store")
    parser.add_argument("--targets", default="efficientnet-lite0", help="target key in the store")
    args = parser.parse_args(argv)

    study = neurodec.open_store(args.store)
    ids, embeddings = study.targets(args.targets)
    stimuli = study.stimuli
    split = dict(zip(stimuli["id"].tolist(), stimuli["split"].tolist()))
    category = dict(zip(stimuli["id"].tolist(), stimuli["category"].tolist()))
    train = np.array([split[i] == "train" for i in ids])
    raw = image_features(study.stimulus_content(list(ids)), categories=[category[i] for i in ids])
    early, late = generator_features(standardise(raw, {name: values[train] for name, values in raw.items()}))
    driving = np.concatenate([early, late], axis=1)
    ridge = RidgeCV(alphas=np.logspace(-2, 6, 17)).fit(embeddings[train], driving[train])
    r2 = float(r2_score(driving[~train], ridge.predict(embeddings[~train])))
    print(f"targets {args.targets} {embeddings.shape} -> driving features {driving.shape}: "
          f"held-out R^2 = {r2:.3f} (alpha {ridge.alpha_:g}; the demo promises < 0.5)")
    return r2


if __name__ == "__main__":
    main()
