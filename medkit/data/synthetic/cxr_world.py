"""The tables of the embedded chest-radiograph world: finding universe, latent processes,
dataset label names and each dataset's prevalences and acquisition (see `cxr.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cxr_render import Acquisition


@dataclass(frozen=True)
class Finding:
    """One finding type: its cue, CheXpert-like prevalence and how reports mention it."""

    id: str
    name: str
    cue: str
    prevalence: float  # target marginal in the training dataset
    uncertain: float = 0.0  # P(a present finding is hedged in the report → -1.0)
    unsure: float = 0.0  # P(an absent finding is hedged → -1.0)
    negated: float = 0.05  # P(an absent finding is negated in the report → 0.0; else blank)
    laterality: str = "lr"  # lr: right/left/bilateral, uni: right/left, bi: both, none


FINDINGS: tuple[Finding, ...] = (
    Finding("enlarged_cardiomediastinum", "Enlarged Cardiomediastinum",
            "widened mediastinal silhouette above the heart", .05, .45, .01, .15, "none"),
    Finding("cardiomegaly", "Cardiomegaly",
            "enlarged heart silhouette, cardiothoracic ratio above 0.55", .12, .2, .01, .25, "none"),
    Finding("lung_opacity", "Lung Opacity", "ill-defined hazy brighter zone within a lung field", .40, .05, .01, .15),
    Finding("nodule", "Nodule", "small sharply marginated round density in a lung", .025, .15, .005, .05, "uni"),
    Finding("mass", "Mass", "large round lobulated density in a lung", .017, .15, .005, .03, "uni"),
    Finding("edema", "Edema", "bilateral perihilar (bat-wing) haze with Kerley-B lines at the bases", .20, .3, .02, .3, "bi"),
    Finding("consolidation", "Consolidation",
            "dense sharp-edged lobar opacity with dark branching air bronchograms", .06, .4, .03, .35),
    Finding("pneumonia", "Pneumonia", "clustered patchy opacities in one zone, usually with consolidation", .03, .5, .04, .2),
    Finding("atelectasis", "Atelectasis",
            "plate-like dense band in a lower zone, elevated hemidiaphragm (volume loss)", .15, .5, .02, .1),
    Finding("pneumothorax", "Pneumothorax",
            "pleural line near the apex, dark lung without vessel markings beyond it", .08, .1, .01, .5, "uni"),
    Finding("pleural_effusion", "Pleural Effusion",
            "fluid density at the lung base with a meniscus, blunted costophrenic angle", .35, .1, .01, .45),
    Finding("pleural_thickening", "Pleural Thickening", "dense band along the lateral chest wall", .02, .3, .005, .02),
    Finding("fracture", "Rib Fracture", "rib discontinuity with a step-off and a bright callus", .04, .15, .005, .1, "uni"),
    Finding("support_devices", "Support Devices",
            "bright lines and tubes (ET tube, central line, enteric tube), pacemaker box with leads", .45, 0, 0, 0, "none"),
    Finding("emphysema", "Emphysema",
            "hyperlucent dark lungs, flattened low diaphragm domes, narrow heart", .06, laterality="bi"),
    Finding("fibrosis", "Fibrosis", "reticular net of fine lines at both lung bases, slight volume loss", .03, laterality="bi"),
    Finding("ild", "Interstitial Lung Disease",
            "fine reticulonodular texture of dots and short lines over both lungs", .03, laterality="bi"),
    Finding("calcification", "Calcification", "a few very bright small dots in the lungs", .05, negated=0, laterality="none"),
    Finding("aortic_enlargement", "Aortic Enlargement",
            "widened bulging aortic knob at the upper left mediastinum", .06, laterality="none"),
    Finding("lung_cavity", "Lung Cavity",
            "round thick-walled ring with a dark centre, sometimes an air-fluid level", .02, negated=0, laterality="uni"),
    Finding("hernia", "Hernia",
            "round gas bubble with an air-fluid level over the heart (hiatal hernia)", .02, laterality="none"),
    Finding("infiltration", "Infiltration", "diffuse short streaky opacities over the mid and lower zones", .08),
    Finding("clavicle_fracture", "Clavicle Fracture",
            "break in a clavicle with a displaced lateral fragment", .02, laterality="uni"),
    Finding("mediastinal_shift", "Mediastinal Shift",
            "heart, trachea and mediastinum displaced towards one side", .02, laterality="uni"),
)
IDS = tuple(f.id for f in FINDINGS)

# latent process -> {finding: P(finding | process)}; chronic ones are drawn once per patient
PROCESSES: dict[str, dict[str, float]] = {
    "heart_failure": {"cardiomegaly": .5, "edema": .65, "pleural_effusion": .6, "enlarged_cardiomediastinum": .12,
                      "lung_opacity": .45},
    "infection": {"pneumonia": .35, "consolidation": .6, "lung_opacity": .85, "pleural_effusion": .2, "infiltration": .3,
                  "lung_cavity": .06},
    "icu": {"support_devices": .92, "pleural_effusion": .3, "atelectasis": .3, "lung_opacity": .3, "pneumothorax": .06},
    "copd": {"emphysema": .75, "pneumothorax": .05, "calcification": .1},
    "trauma": {"fracture": .55, "clavicle_fracture": .3, "pneumothorax": .3, "pleural_effusion": .15, "lung_opacity": .2},
    "interstitial": {"fibrosis": .6, "ild": .7, "infiltration": .25},
    "malignancy": {"mass": .5, "nodule": .45, "pleural_effusion": .3, "atelectasis": .2, "mediastinal_shift": .15},
    "vascular": {"aortic_enlargement": .6, "calcification": .4, "cardiomegaly": .2, "enlarged_cardiomediastinum": .15},
}
CHRONIC = ("heart_failure", "copd", "interstitial", "malignancy", "vascular")


def _label_map(*pairs: str) -> dict[str, tuple[str, ...]]:
    """'Label=finding finding' pairs; a label is positive when any of its findings is present."""
    return {lab: tuple(ids.split()) for lab, ids in (p.split("=") for p in pairs)}


# each dataset's label names (in its column order) -> universe findings
LABEL_MAPS: dict[str, dict[str, tuple[str, ...]]] = {
    "synth_cxr": _label_map(
        "No Finding=", "Enlarged Cardiomediastinum=enlarged_cardiomediastinum", "Cardiomegaly=cardiomegaly",
        "Lung Opacity=lung_opacity", "Lung Lesion=nodule mass", "Edema=edema", "Consolidation=consolidation",
        "Pneumonia=pneumonia", "Atelectasis=atelectasis", "Pneumothorax=pneumothorax", "Pleural Effusion=pleural_effusion",
        "Pleural Other=pleural_thickening", "Fracture=fracture", "Support Devices=support_devices"),
    "synth_cxr14": _label_map(
        "Atelectasis=atelectasis", "Cardiomegaly=cardiomegaly", "Effusion=pleural_effusion", "Infiltration=infiltration",
        "Mass=mass", "Nodule=nodule", "Pneumonia=pneumonia", "Pneumothorax=pneumothorax", "Consolidation=consolidation",
        "Edema=edema", "Emphysema=emphysema", "Fibrosis=fibrosis", "Pleural_Thickening=pleural_thickening", "Hernia=hernia",
        "No Finding="),
    "synth_vindr": _label_map(
        "Aortic enlargement=aortic_enlargement", "Atelectasis=atelectasis", "Calcification=calcification",
        "Cardiomegaly=cardiomegaly", "Consolidation=consolidation", "ILD=ild", "Infiltration=infiltration",
        "Lung Opacity=lung_opacity", "Nodule/Mass=nodule mass", "Other lesion=hernia", "Pleural effusion=pleural_effusion",
        "Pleural thickening=pleural_thickening", "Pneumothorax=pneumothorax", "Pulmonary fibrosis=fibrosis",
        "Rib fracture=fracture", "Clavicle fracture=clavicle_fracture", "Emphysema=emphysema", "Lung cavity=lung_cavity",
        "Mediastinal shift=mediastinal_shift", "Edema=edema", "Pneumonia=pneumonia", "No finding="),
}
NO_FINDING = {"No Finding", "No finding"}
NOT_PATHOLOGY = NO_FINDING | {"Support Devices"}


@dataclass(frozen=True)
class DatasetDef:
    description: str
    processes: dict[str, float]  # process -> P(active)
    prevalence: dict[str, float] = field(default_factory=dict)  # overrides of FINDINGS' targets
    acquisition: Acquisition = Acquisition()
    lateral: float = 0.0  # P(a study also has a lateral view)
    ap: tuple[float, float] = (0.5, 0.95)  # P(AP) without / with the ICU process
    follow_up: float = 0.0  # P(another study of the same patient), up to 4 studies


DATASET_DEFS: dict[str, DatasetDef] = {
    "synth_cxr": DatasetDef(
        "CheXpert-like training set: 14 CheXpert labels, uncertain/blank train labels, frontal+lateral, reports.jsonl",
        {"heart_failure": .18, "infection": .07, "icu": .45, "copd": .07, "trauma": .04, "interstitial": .04,
         "malignancy": .04, "vascular": .08}, acquisition=Acquisition(marker=True), lateral=.18, follow_up=.4),
    "synth_cxr14": DatasetDef(
        "ChestX-ray14-like evaluation set: 14 NIH findings + No Finding, Data_Entry_2017.csv, frontal only",
        {"heart_failure": .05, "infection": .05, "icu": .12, "copd": .05, "trauma": .02, "interstitial": .05,
         "malignancy": .08, "vascular": .05},
        {"infiltration": .18, "pleural_effusion": .13, "atelectasis": .11, "nodule": .06, "mass": .055, "pneumothorax": .05,
         "consolidation": .045, "pleural_thickening": .035, "cardiomegaly": .035, "emphysema": .03, "edema": .025,
         "fibrosis": .025, "pneumonia": .025, "hernia": .02, "support_devices": .12, "lung_opacity": .12,
         "enlarged_cardiomediastinum": .03, "fracture": .02, "calcification": .03, "aortic_enlargement": .04},
        Acquisition(noise=(.01, .03), blur=(.8, 1.3), contrast=(1.0, 1.25), gamma=(.9, 1.3), offset=(-.06, .02)),
        ap=(.35, .9), follow_up=.5),
    "synth_vindr": DatasetDef(
        "VinDr-CXR-like evaluation set: 21 VinDr findings + No finding in a generic labels.csv, mostly normal, frontal PA",
        {"heart_failure": .04, "infection": .03, "icu": .03, "copd": .03, "trauma": .03, "interstitial": .05,
         "malignancy": .05, "vascular": .12},
        {"aortic_enlargement": .12, "cardiomegaly": .09, "pleural_thickening": .07, "fibrosis": .06, "nodule": .03,
         "mass": .025, "lung_opacity": .05, "pleural_effusion": .04, "calcification": .06, "hernia": .03, "ild": .04,
         "infiltration": .03, "consolidation": .025, "pneumothorax": .02, "atelectasis": .025, "fracture": .025,
         "mediastinal_shift": .02, "emphysema": .03, "lung_cavity": .02, "clavicle_fracture": .02, "edema": .025,
         "pneumonia": .025, "support_devices": .03, "enlarged_cardiomediastinum": .03},
        Acquisition(noise=(.008, .02), blur=(.3, .6), contrast=(.8, 1.0), gamma=(.75, 1.0), border=.04), ap=(.05, .5)),
}
CXR_DATASETS: dict[str, str] = {k: v.description for k, v in DATASET_DEFS.items()}
# images per split (train, val, test); the evaluation sets fold val into their train list
_EVAL_SIZES = {"smoke": (60, 20, 40), "tiny": (250, 100, 500), "paper": (250, 100, 500)}
PROFILE_SIZES = {"synth_cxr": {"smoke": (60, 20, 40), "tiny": (1400, 300, 500), "paper": (1400, 300, 500)},
                 "synth_cxr14": _EVAL_SIZES, "synth_vindr": _EVAL_SIZES}
