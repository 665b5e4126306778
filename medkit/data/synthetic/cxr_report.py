"""Radiology-report-like texts of the embedded chest-radiograph world (see `cxr.py`).

A report names every present finding of the universe, seen or unseen by a training label
space, with varied phrasing, laterality and severity, hedges the findings the study
marks as uncertain ("Possible atelectasis.") and negates some absent ones
("No pneumothorax."), in a MIMIC-CXR-like FINDINGS + IMPRESSION layout. The training
dataset's CSV is derived from the same mentions, the way CheXpert's labeler reads reports:
a negated finding is 0.0, a hedged one -1.0, an unmentioned one blank.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Attrs = Mapping[str, Any]

# finding id -> (noun for hedges and the impression, positive sentences, negations)
PHRASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "support_devices": ("support devices", (), ("No lines or tubes.",)),
    "enlarged_cardiomediastinum": ("enlarged cardiomediastinum", (
        "The cardiomediastinal silhouette is widened.", "Enlarged cardiomediastinal silhouette.",
        "Widening of the mediastinum."), ("Normal cardiomediastinal contours.", "The mediastinum is not widened.")),
    "cardiomegaly": ("cardiomegaly", (
        "{Sev} cardiomegaly.", "The heart is {sevly} enlarged.",
        "Enlarged cardiac silhouette, consistent with {sev} cardiomegaly."),
        ("Heart size is normal.", "No cardiomegaly.", "The cardiac silhouette is within normal limits.")),
    "aortic_enlargement": ("aortic enlargement", (
        "The aortic knob is enlarged.", "Dilated and tortuous thoracic aorta with an enlarged aortic knob.",
        "Aortic enlargement."), ("The aorta is normal in caliber.",)),
    "mediastinal_shift": ("mediastinal shift", (
        "Mediastinal shift to the {side}.", "The trachea and mediastinum are shifted to the {side}.",
        "Shift of the mediastinum towards the {side}."), ("The trachea is midline.",)),
    "lung_opacity": ("lung opacity", (
        "Hazy opacity in the {loc}.", "{Sev} airspace opacity in the {loc}.", "Ill-defined opacity in the {loc}."),
        ("No focal opacity.",)),
    "consolidation": ("consolidation", (
        "Consolidation in the {loc}.", "Dense {loc} consolidation with air bronchograms.", "{Loc} consolidation."),
        ("No focal consolidation.", "No consolidation.")),
    "pneumonia": ("pneumonia", (
        "Patchy opacities in the {loc}, concerning for pneumonia.", "{Loc} pneumonia.",
        "Findings consistent with pneumonia in the {loc}."), ("No evidence of pneumonia.",
        "No radiographic signs of pneumonia.")),
    "edema": ("pulmonary edema", (
        "{Sev} pulmonary edema.", "Bilateral perihilar haziness and Kerley B lines, consistent with {sev} pulmonary edema.",
        "Findings of {sev} interstitial edema."), ("No pulmonary edema.", "No evidence of edema.")),
    "atelectasis": ("atelectasis", (
        "Plate-like atelectasis at the {side_base}.", "{Loc} atelectasis.",
        "Linear opacity at the {side_base} consistent with atelectasis."),
        ("No atelectasis.",)),
    "infiltration": ("infiltration", (
        "Streaky infiltrates in the {loc}.", "{Loc} infiltration.", "Diffuse streaky infiltrative opacities in the {loc}."),
        ("No infiltrate.",)),
    "ild": ("interstitial lung disease", (
        "Diffuse reticulonodular interstitial pattern, compatible with interstitial lung disease.",
        "{Sev} interstitial lung disease.",
        "Diffuse interstitial abnormality throughout both lungs, in keeping with interstitial lung disease."),
        ("No interstitial abnormality.",)),
    "fibrosis": ("pulmonary fibrosis", (
        "Reticular opacities at both lung bases, consistent with fibrosis.", "Bibasilar pulmonary fibrosis.",
        "{Sev} basilar fibrotic changes."), ("No fibrotic changes.",)),
    "emphysema": ("emphysema", (
        "Hyperinflated, hyperlucent lungs with flattened hemidiaphragms, consistent with emphysema.", "{Sev} emphysema.",
        "Emphysematous changes with flattening of the diaphragm."), ("No hyperinflation.",)),
    "nodule": ("pulmonary nodule", (
        "{Loc} pulmonary nodule.", "A well-circumscribed nodule in the {loc}.",
        "Small rounded density in the {loc}, likely a nodule."),
        ("No pulmonary nodules.",)),
    "mass": ("mass", (
        "A {cm} cm mass in the {loc}.", "Large lobulated {loc} mass.", "{Loc} mass measuring approximately {cm} cm."),
        ("No mass lesion.",)),
    "lung_cavity": ("lung cavity", (
        "Thick-walled cavitary lesion in the {loc}.", "{Loc} cavity with an air-fluid level.",
        "A cavitating lesion in the {loc}."), ()),
    "calcification": ("calcification", (
        "Several calcified granulomas.", "Scattered punctate calcifications in the lungs.",
        "Small calcified nodules, likely healed granulomas, consistent with calcification."), ()),
    "pneumothorax": ("pneumothorax", (
        "{Size} {side} apical pneumothorax.", "There is a {size} {side} pneumothorax.",
        "{Side} pneumothorax with a visible pleural line."),
        ("No pneumothorax.", "There is no pneumothorax.")),
    "pleural_effusion": ("pleural effusion", (
        "{Size} {side} pleural effusion{s}.",
        "Blunting of the {side} costophrenic angle{s}, consistent with {size} pleural effusion{s}.",
        "{Side} pleural effusion{s}, {size} in size."), ("No pleural effusion.", "No effusion.",
        "The costophrenic angles are sharp.")),
    "pleural_thickening": ("pleural thickening", (
        "{Side} pleural thickening.", "Pleural thickening along the {side} lateral chest wall.",
        "Smooth {side} pleural thickening."),
        ("No pleural thickening.",)),
    "hernia": ("hiatal hernia", (
        "Retrocardiac air-fluid level consistent with a hiatal hernia.", "{Sev} hiatal hernia.",
        "Hiatal hernia projecting over the heart."),
        ("No hiatal hernia.",)),
    "fracture": ("rib fracture", (
        "Fracture of a {side} posterior rib.", "{Side} rib fracture with callus formation.",
        "Healing fracture of the {side} {nth} rib."),
        ("No displaced rib fracture.", "No rib fracture.")),
    "clavicle_fracture": ("clavicle fracture", (
        "Fracture of the {side} clavicle.", "Displaced {side} clavicle fracture.", "{Side} clavicular fracture."),
        ("The clavicles are intact.",)),
}
ORDER = tuple(PHRASES)  # devices, mediastinum and heart, lungs, pleura, bones: a report's usual order
_DEVICE_PHRASES = {
    "et_tube": ("Endotracheal tube terminates {n} cm above the carina.", "ET tube in standard position."),
    "central_line": ("Right internal jugular central venous catheter with tip in the SVC.",
        "Central line tip at the cavoatrial junction."),
    "ng_tube": ("Enteric tube courses below the diaphragm.", "Nasogastric tube tip in the stomach."),
    "pacemaker": ("Left chest wall pacemaker with leads in the right heart.", "Pacemaker device with intact leads."),
    "ecg_leads": ("ECG leads overlie the chest.", "Monitoring leads project over the chest."),
}
_HEDGES = ("Possible {noun}.", "{Noun} cannot be excluded.", "Findings may represent {noun}.", "Questionable {noun}.")
_NORMAL = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "No acute intrathoracic process.")
_SEV = {"mild": ("mild", "mildly", "small", "3.5"), "moderate": ("moderate", "moderately", "moderate", "5"),
        "severe": ("severe", "markedly", "large", "7")}
_ZONES = {"upper": (("upper lobe", "upper zone"), "upper lobes"), "mid": (("mid lung", "perihilar region"), "mid lungs"),
          "lower": (("lower lobe", "lung base"), "lung bases")}
_PARENCHYMA = {"lung_opacity", "consolidation", "pneumonia", "edema", "atelectasis", "infiltration", "ild", "fibrosis",
               "nodule", "mass", "lung_cavity"}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _words(a: Attrs, rng: np.random.Generator) -> dict[str, str]:
    side = a.get("side", "bilateral")
    sev, sevly, size, cm = _SEV[a.get("severity", "moderate")]
    singular, plural = _ZONES[a.get("zone", "mid")]
    loc = f"bilateral {plural}" if side == "bilateral" else f"{side} {_pick(rng, singular)}"
    w = {"side": side, "sev": sev, "sevly": sevly, "size": size, "cm": cm, "loc": loc,
         "s": "s" if side == "bilateral" else "", "nth": _pick(rng, ("fifth", "sixth", "seventh", "eighth")),
         "side_base": "lung bases" if side == "bilateral" else f"{side} lung base"}
    w.update({k.capitalize(): _cap(v) for k, v in list(w.items())})
    return w


def _devices(a: Attrs, rng: np.random.Generator) -> list[str]:
    return [_pick(rng, _DEVICE_PHRASES[d]).format(n=int(rng.integers(3, 6))) for d in a.get("devices", ("et_tube",))]


def _hedge(noun: str, rng: np.random.Generator) -> str:
    return _pick(rng, _HEDGES).format(noun=noun, Noun=_cap(noun))


def write_report(findings: Mapping[str, Attrs], uncertain: frozenset[str], unsure: frozenset[str],
                 negated: frozenset[str], rng: np.random.Generator) -> str:
    """FINDINGS + IMPRESSION text of one study (all ids are universe finding ids)."""
    sentences: list[str] = []
    impression: list[str] = []
    for fid in ORDER:
        noun, positive, negations = PHRASES[fid]
        if fid in findings:
            a = findings[fid]
            if fid == "support_devices":
                sentences += _devices(a, rng)
                continue
            if fid in uncertain:
                sentences.append(_hedge(noun, rng))
                impression.append(_hedge(noun, rng).rstrip("."))
                continue
            w = _words(a, rng)
            sentences.append(_pick(rng, positive).format(**w))
            side = w["side"] + " " if "side" in a and a["side"] != "bilateral" and fid != "mediastinal_shift" else ""
            impression.append(_cap(f"{side}{noun}"))
        elif fid in unsure:
            sentences.append(_hedge(noun, rng))
        elif fid in negated and negations:
            sentences.append(_pick(rng, negations))
    if not _PARENCHYMA & set(findings) and not _PARENCHYMA & unsure and rng.random() < 0.6:
        sentences.append(_pick(rng, ("The lungs are clear.", "Lungs are well expanded and clear.")))
    if impression:
        impr = ". ".join(impression[:4]) + "."
    else:
        impr = _pick(rng, _NORMAL)
    return f"FINDINGS: {' '.join(sentences)} IMPRESSION: {impr}"
