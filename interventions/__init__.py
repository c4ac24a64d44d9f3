"""interventions: read and edit what happens inside HuggingFace transformer language models.

import interventions as iv

with iv.capture(model, "layers.*.attn.heads", positions=-1) as cache:
    model(**inputs)
with iv.intervene(model, {"layers.12.attn.heads": iv.AddBias(v, heads=[3])}):
    model.generate(**inputs)
"""

from interventions import (
    distributed,
    lm,
    stats,
    store,
    text,
)  # modules: iv.text.pad, iv.lm.perplexity, ...
from interventions.adapters import (
    Adapter,
    BiasFlag,
    Geometry,
    adapter,
    geometry,
    register_adapter,
)
from interventions.attach import Attachment, Cache, attach, capture, intervene, normalize_plan
from interventions.ops import (
    Ablate,
    AddBias,
    Capture,
    Compose,
    Intervention,
    Patch,
    Project,
    Rescale,
    Step,
)
from interventions.patching import (
    Lens,
    PatchingResult,
    attribution_patching,
    logit_diff,
    logit_lens,
    patching,
)
from interventions.sites import Site, all_sites, expand, layer_range, parse
from interventions.stats import Mean, MeanNorm, Reducer, SecondMoment, tally
from interventions.store import ActivationDataset
from interventions.weights import WeightDelta, bake, parameters

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "ActivationDataset",
    "Adapter",
    "AddBias",
    "Attachment",
    "BiasFlag",
    "Cache",
    "Capture",
    "Compose",
    "Geometry",
    "Intervention",
    "Lens",
    "Mean",
    "MeanNorm",
    "Patch",
    "PatchingResult",
    "Project",
    "Reducer",
    "Rescale",
    "SecondMoment",
    "Site",
    "Step",
    "WeightDelta",
    "adapter",
    "all_sites",
    "attach",
    "attribution_patching",
    "bake",
    "capture",
    "distributed",
    "expand",
    "geometry",
    "intervene",
    "layer_range",
    "lm",
    "logit_diff",
    "logit_lens",
    "normalize_plan",
    "parameters",
    "parse",
    "patching",
    "register_adapter",
    "stats",
    "store",
    "tally",
    "text",
]
