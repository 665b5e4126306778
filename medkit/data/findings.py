"""Chest X-ray finding names across datasets: synonyms, and which target findings a model has seen.

Zero-shot transfer between label sets (train on CheXpert, test on ChestX-ray14, VinDr-CXR or
PadChest) reports "seen" and "unseen" findings separately. Whether a target finding was seen
depends on how names are matched:

- `how="exact"`: the PsPG reference behaviour: a target finding is seen when its lower-cased
  name is, character for character, a lower-cased training name. ChestX-ray14's "Effusion" is
  then *unseen* after CheXpert training, although it is CheXpert's "Pleural Effusion".
- `how="normalised"`: the same, blind to case, `_`, `-`, punctuation and spacing
  ("Pleural_Thickening" = "pleural thickening").
- `how="synonyms"` (default): normalised names, and the alternative names of `SYNONYMS`
  (as CheXzero keeps alternative label names per finding).

`SYNONYMS` holds only true synonyms: two names for the same finding. A parent and its child
(Lung Lesion ⊃ Nodule, Mass; Fracture ⊃ Rib fracture; Pleural Other ⊃ Pleural thickening;
Hernia ⊃ Hiatal hernia) are different findings: a model that learned the parent has not learned
the child's name, and a positive child is a positive parent but not the other way round.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from functools import lru_cache
from typing import Mapping, Sequence

import pandas as pd

from medkit.data.labels import LabelSpace, MultiLabelSpace

__all__ = ["MATCH_POLICIES", "SYNONYMS", "canonical_finding", "match_label_spaces", "normalise_finding",
           "seen_unseen_table", "synonyms_for"]

MATCH_POLICIES = ("synonyms", "normalised", "exact")

#: canonical finding -> its other names. Canonical names are CheXpert's where CheXpert has the
#: finding (the usual training set), else ChestX-ray14's, VinDr-CXR's, then PadChest's.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # --- CheXpert (14)
    "No Finding": ("No finding", "No findings", "Normal", "Normal study"),
    # an enlarged cardiomediastinal silhouette; Cardiomegaly (the heart alone) is its child, and
    # PadChest's "superior mediastinal enlargement" a child too
    "Enlarged Cardiomediastinum": ("Enlarged cardiomediastinal silhouette", "Cardiomediastinal enlargement",
                                   "Widened mediastinum", "Mediastinal widening", "Mediastinal enlargement",
                                   "Enlarged mediastinum"),
    "Cardiomegaly": ("Enlarged heart", "Cardiac enlargement", "Heart enlargement", "Enlarged cardiac silhouette"),
    # ChestX-ray14's "Infiltration" is often mapped to Lung Opacity in papers, but an infiltrate is
    # one cause of an opacity, not another name for it: kept apart
    "Lung Opacity": ("Airspace opacity", "Air space opacity", "Pulmonary opacity", "Lung opacities"),
    # the parent of Nodule and Mass (and of VinDr's Nodule/Mass): deliberately no child names here
    "Lung Lesion": ("Pulmonary lesion", "Lung lesions"),
    "Edema": ("Pulmonary edema", "Pulmonary oedema", "Oedema", "Lung edema"),
    "Consolidation": ("Airspace consolidation", "Consolidations"),
    "Pneumonia": (),
    "Atelectasis": ("Atelectases", "Lung collapse"),
    "Pneumothorax": ("PTX",),
    "Pleural Effusion": ("Effusion", "Pleural effusions", "Pleural fluid"),  # ChestX-ray14's Effusion is pleural
    # CheXpert's catch-all for other pleural findings (thickening, plaques, fibrosis): a parent
    "Pleural Other": (),
    # Judgement call: CheXpert's Fracture is any bone fracture, VinDr's and PadChest's "Rib fracture"
    # and "Clavicle fracture" are children. Most chest-film fractures are rib fractures, but a
    # positive Fracture is not a positive Rib fracture, so matching them would score a model on a
    # finding it was never asked: they stay unseen. Only true synonyms of "Fracture" are listed.
    "Fracture": ("Bone fracture", "Fractures", "Fractured bone"),
    "Support Devices": ("Support device", "Medical device", "Medical devices"),
    # --- ChestX-ray14 (the ones CheXpert lacks)
    "Infiltration": ("Infiltrate", "Infiltrates", "Pulmonary infiltrate", "Pulmonary infiltrates"),
    "Mass": ("Pulmonary mass", "Lung mass"),
    "Nodule": ("Pulmonary nodule", "Lung nodule"),
    "Emphysema": ("Pulmonary emphysema",),  # COPD is a disease with emphysema as one sign: kept apart
    "Fibrosis": ("Pulmonary fibrosis", "Lung fibrosis"),
    "Pleural Thickening": ("Pleural_Thickening", "Pleural thickenings"),
    "Hernia": (),  # ChestX-ray14's Hernia includes hiatal and diaphragmatic hernias: a parent
    # --- VinDr-CXR
    "Aortic enlargement": ("Enlarged aorta", "Aortic dilatation", "Aortic dilation"),  # not PadChest's elongation
    "Calcification": ("Calcifications",),
    "Clavicle fracture": ("Clavicular fracture", "Fractured clavicle"),
    "Rib fracture": ("Rib fractures", "Fractured rib", "Fractured ribs"),
    "Enlarged PA": ("Enlarged pulmonary artery", "Pulmonary artery enlargement", "Dilated pulmonary artery"),
    # PadChest's "interstitial pattern" is a radiological pattern, not the disease: kept apart
    "Interstitial lung disease": ("ILD", "Interstitial lung diseases"),
    "Lung cavity": ("Pulmonary cavity", "Cavitation", "Cavity"),
    "Lung cyst": ("Pulmonary cyst", "Lung cysts"),
    "Mediastinal shift": ("Mediastinal deviation",),
    # a union class (either finding): neither Nodule nor Mass alone
    "Nodule/Mass": ("Nodule or mass", "Mass or nodule", "Mass/Nodule", "Masses, Nodules", "Nodules/Masses"),
    "Other lesion": (),
    "COPD": ("Chronic obstructive pulmonary disease", "COPD signs"),  # PadChest labels its radiographic signs
    "Lung tumor": ("Lung tumour", "Pulmonary tumor", "Pulmonary tumour", "Lung neoplasm", "Pulmonary neoplasm"),
    "Tuberculosis": ("TB", "Pulmonary tuberculosis"),  # PadChest's "tuberculosis sequelae" is another finding
    "Other disease": (),
    # --- PadChest (frequent labels with common other names)
    "Costophrenic angle blunting": ("Blunted costophrenic angle", "Blunting of the costophrenic angle"),
    "Hemidiaphragm elevation": ("Elevated hemidiaphragm", "Raised hemidiaphragm"),
    "Hiatal hernia": ("Hiatus hernia",),
    "Heart insufficiency": ("Heart failure", "Cardiac insufficiency", "Cardiac failure"),
    "Hyperinflated lung": ("Hyperinflation", "Lung hyperinflation", "Hyperinflated lungs"),
    "Ground glass pattern": ("Ground glass opacity", "Ground-glass opacity", "GGO"),
    "Laminar atelectasis": ("Plate atelectasis", "Plate-like atelectasis", "Discoid atelectasis"),
    "Adenopathy": ("Lymphadenopathy",),
    "Bullas": ("Bulla", "Bullae"),
    "Goiter": ("Goitre",),
    "Endotracheal tube": ("ETT", "Endotracheal tubes"),
    "NSG tube": ("Nasogastric tube", "NG tube"),
    "Central venous catheter": ("CVC", "Central line"),
    "Pacemaker": ("Cardiac pacemaker",),
    "Scoliosis": (),
    "Kyphosis": (),
    "Sternotomy": ("Median sternotomy",),
    "Bronchiectasis": (),
    "Granuloma": (),
    "Calcified granuloma": (),
    "Hilar enlargement": ("Enlarged hilum", "Hilar prominence"),
    "Aortic elongation": (),
}


def normalise_finding(name: str) -> str:
    """Lower case; `_`, `-`, `/`, `,` and other punctuation as spaces; spacing collapsed.

    "Pleural_Thickening", "pleural-thickening" and " Pleural  Thickening " all give
    "pleural thickening"; "Nodule/Mass" gives "nodule mass".
    """
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    text = re.sub(r"[\W_]+", " ", text)  # every run of non-letters/digits (and "_") is one space
    return " ".join(text.split())


def _index(synonyms: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """normalised name -> canonical finding; a name claimed by two findings is an error (it
    would make matching depend on dictionary order)."""
    out: dict[str, str] = {}
    for canon, alternatives in synonyms.items():
        for name in (canon, *alternatives):
            key = normalise_finding(name)
            if out.setdefault(key, canon) != canon:
                raise ValueError(f"synonyms: {name!r} is listed under both {out[key]!r} and {canon!r}")
    return out


@lru_cache(maxsize=1)
def _default_index() -> dict[str, str]:
    return _index(SYNONYMS)


def _index_for(synonyms: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return _default_index() if synonyms is SYNONYMS else _index(synonyms)


def canonical_finding(name: str, synonyms: Mapping[str, Sequence[str]] = SYNONYMS) -> str | None:
    """The canonical finding `name` is a name of (case/punctuation-blind), or None."""
    return _index_for(synonyms).get(normalise_finding(name))


def synonyms_for(names: Sequence[str], synonyms: Mapping[str, Sequence[str]] = SYNONYMS) -> dict[str, tuple[str, ...]]:
    """For each of `names` that `synonyms` knows: its other names (the canonical one included,
    the name itself excluded, case-blind), as a label space carries them (`MultiLabelSpace.synonyms`)."""
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        canon = canonical_finding(name, synonyms)
        if canon is None:
            continue
        # "Pleural Thickening" is kept for "Pleural_Thickening": same finding, a better prompt
        others = {n.lower(): n for n in (canon, *synonyms[canon]) if n.lower() != name.lower()}
        if others:
            out[name] = tuple(others.values())
    return out


def _keys(name: str, space: LabelSpace, index: Mapping[str, str]) -> set[str]:
    """Every normalised form `name` is known by: itself, the space's own synonyms for it, and
    its canonical finding's names."""
    own = getattr(space, "synonyms", {}).get(name, ())
    keys = {normalise_finding(n) for n in (name, *own)}
    canon = {index[k] for k in keys if k in index}
    return keys | {normalise_finding(c) for c in canon} | {k for k, c in index.items() if c in canon}


def how_matched(target_name: str, train_name: str) -> str:
    """"exact" (same lower-cased name), "normalised" (same up to case and punctuation) or "synonym"."""
    if target_name.lower() == train_name.lower():
        return "exact"
    return "normalised" if normalise_finding(target_name) == normalise_finding(train_name) else "synonym"


def match_label_spaces(train: LabelSpace, target: LabelSpace, synonyms: Mapping[str, Sequence[str]] = SYNONYMS,
                       how: str = "synonyms") -> MultiLabelSpace:
    """`target` with `seen` (its findings the training label space also has) and `train_name`
    (target name -> the training space's name for it) set.

    `how`: "exact" (PsPG: lower-cased exact string match), "normalised" (case and punctuation
    blind) or "synonyms" (normalised, plus `synonyms` and the spaces' own `synonyms`). When
    several training names match one finding the closest wins (exact, then normalised, then
    synonym), then the first in training order.
    """
    if how not in MATCH_POLICIES:
        raise ValueError(f"how={how!r}: use one of {list(MATCH_POLICIES)}")
    if not isinstance(target, MultiLabelSpace):
        target = MultiLabelSpace(target.classnames, synonyms=synonyms_for(target.classnames, synonyms))
    index = _index_for(synonyms)
    rank = {"exact": 0, "normalised": 1, "synonym": 2}
    allowed = {"exact": {"exact"}, "normalised": {"exact", "normalised"}, "synonyms": set(rank)}[how]
    train_keys = {t: _keys(t, train, index) for t in train.classnames} if how == "synonyms" else {}
    mapping: dict[str, str] = {}
    for name in target.classnames:
        keys = _keys(name, target, index) if how == "synonyms" else set()
        found = []
        for t in train.classnames:
            kind = how_matched(name, t)
            if kind == "synonym" and not keys & train_keys.get(t, set()):
                continue
            if kind in allowed:
                found.append((rank[kind], t))
        if found:
            mapping[name] = min(found, key=lambda f: f[0])[1]  # min is stable: training order breaks ties
    seen = tuple(c for c in target.classnames if c in mapping)
    return replace(target, seen=seen, train_name=mapping)


def seen_unseen_table(space: MultiLabelSpace) -> pd.DataFrame:
    """One row per finding of a matched space: finding, seen, training name, how matched."""
    if getattr(space, "seen", None) is None:
        raise ValueError("this label space has not been matched: call match_label_spaces(train, target) first")
    rows = []
    for name in space.classnames:
        train = space.train_name.get(name) if name in space.seen else None
        rows.append({"finding": name, "seen": train is not None, "training name": train or "",
                     "how matched": how_matched(name, train) if train else ""})
    return pd.DataFrame(rows, columns=["finding", "seen", "training name", "how matched"])
