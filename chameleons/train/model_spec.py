"""`model.random_init` checked against the transformers config class it names, before anything is
written (the dry run too): an unknown model type, a key the class does not have (transformers
keeps a typo such as `hidden_sise` as an extra attribute and builds the default size), a value
of the wrong type (the class's own strict check), and a size or count below 1."""

import dataclasses
import difflib
import importlib.util
import re
from pathlib import Path

from ..core.errors import UserError

LEGACY_KEYS = {"rope_theta", "rope_scaling", "partial_rotary_factor"}  # converted into rope_parameters
# sizes and counts: a model with 0 or fewer of them cannot be built (or builds an empty layer)
_AT_LEAST_ONE = re.compile(r"(^num_|^n_|_size$|_dim$|_layers$|_heads$|_experts$|_per_tok$|_step$)")


def _where(config, key: str) -> str:
    dotted = f"model.random_init.{key}" if key else "model.random_init"
    sets = [o for o in config.overrides if o.startswith(("model.random_init=", f"{dotted}="))]
    return f"{config.path}, --set {sets[-1]}" if sets else str(config.path)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_class(config):
    """The transformers config class `model.random_init.model_type` names, or one error line."""
    from transformers import CONFIG_MAPPING

    model_type = config.model.random_init.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UserError(f"{_where(config, 'model_type')}: key model.random_init.model_type {model_type!r} is not a "
                        f"model type transformers knows{_suggest(str(model_type), CONFIG_MAPPING.keys())}; "
                        f"e.g. qwen3 or qwen3_moe")
    return CONFIG_MAPPING[model_type]


def known_keys(cls) -> set:
    """The keys a config class takes: its fields, their aliases (`num_experts` /
    `num_local_experts`), the legacy rope keys it converts, and the attributes its modeling code
    reads from the config (`head_dim` through `getattr(config, "head_dim", ...)`)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    aliases = getattr(cls, "attribute_map", {})
    return names | set(aliases) | set(aliases.values()) | LEGACY_KEYS | _read_by_modeling_code(cls)


def _read_by_modeling_code(cls) -> set:
    """`config.X` and `getattr(config, "X"...)` in the model's modeling file, read as text (no import)."""
    package = cls.__module__.rsplit(".", 1)[0]
    spec = importlib.util.find_spec(f"{package}.modeling_{package.rsplit('.', 1)[-1]}")
    if spec is None or not spec.origin:
        return set()
    text = Path(spec.origin).read_text(encoding="utf-8")
    return set(re.findall(r"config\.(\w+)", text)) | set(re.findall(r"getattr\(\s*config,\s*[\"'](\w+)", text))


def check_random_init(config):
    """One line for the first thing in `model.random_init` the model could not be built from."""
    spec = dict(config.model.random_init)
    cls = config_class(config)
    spec.pop("model_type")
    known = known_keys(cls)
    for key, value in spec.items():
        if known and key not in known:
            raise UserError(f"{_where(config, key)}: unknown key model.random_init.{key} for model type "
                            f"{cls.model_type}{_suggest(key, known)}")
        if isinstance(value, int) and not isinstance(value, bool) and _AT_LEAST_ONE.search(key) and value < 1:
            raise UserError(f"{_where(config, key)}: key model.random_init.{key} must be at least 1, found {value}")
    from huggingface_hub.errors import StrictDataclassError

    try:
        cls(**spec)
    except (StrictDataclassError, TypeError, ValueError) as exc:  # the class's own type and value checks
        raise UserError(f"{_where(config, '')}: key model.random_init (model type {cls.model_type}): "
                        f"{' '.join(str(exc).split())}") from None
